"""Stable Diffusion 1.x/2.x and SDXL models: loading, tiny test models, tokens and text states.

- ``loader.load_sd_model(path, *, v2=None, v_parameterization=None, vae=None, config_dir=None, sdxl=None)``
  -> ``sd.SDModel`` (SD1/SD2) or ``sdxl.SDXLModel``, both :class:`family.ModelFamily`
- ``text.tokenize(tokenizer, captions, max_token_length)`` / ``text.encode(text_encoder, ids, clip_skip)``
- ``tiny.build_tiny_components`` / ``save_tiny_pipeline`` / ``save_tiny_single_file``
- ``tiny_sdxl.build_tiny_sdxl`` / ``save_tiny_sdxl_pipeline`` / ``save_tiny_sdxl_single_file``
- ``sgm_layout`` / ``ldm_layout``: original-layout key tables (single files, SDXL adapter names)
- ``safe_pickle.safe_torch_load`` (``.ckpt`` without running pickled code)
- ``configs_data.config_folder(v2, v_prediction)``, ``sdxl_configs.SDXL_CONFIG_DIR``: the shipped config-only folders
- ``clip_tokenizer.load_tokenizer(folder)``: the CLIP tokenizer of a folder (the shipped ones share one BPE pair)

Submodules import diffusers/transformers lazily; import them directly.
"""
