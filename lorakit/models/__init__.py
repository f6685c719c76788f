"""Stable Diffusion 1.x/2.x models: loading, tiny test models, tokens and text states.

- ``loader.load_sd_model(path, *, v2=None, v_parameterization=None, vae=None, config_dir=None) -> SDModel``
  (``sd.SDModel``: the SD1/SD2 :class:`family.ModelFamily`)
- ``text.tokenize(tokenizer, captions, max_token_length)`` / ``text.encode(text_encoder, ids, clip_skip)``
- ``tiny.build_tiny_components`` / ``save_tiny_pipeline`` / ``save_tiny_single_file``
- ``safe_pickle.safe_torch_load`` (``.ckpt`` without running pickled code)
- ``configs_data.config_folder(v2, v_prediction)``: the shipped config-only folders

Submodules import diffusers/transformers lazily; import them directly.
"""
