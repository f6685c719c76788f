"""kohya's DreamBooth folder layout: `<train_data_dir>/<repeats>_<class tokens>/<images>`.

`scan_folders` turns the folders into a :class:`DatasetIndex`: one :class:`ImageItem` per
image used, the repeat counts (regularization images balanced against the train images
exactly as sd-scripts' DreamBoothDataset does), the numbers the step count and the
metadata need (num_train_images, ss_tag_frequency, ss_dataset_dirs), and a per-folder
summary for `lorakit plan`. Every image is decoded once here (see images.probe_image)
for its upright size (the buckets need it) and so that corrupt, empty or truncated files
are skipped now, named in ONE warning, instead of stopping a run midway.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config.schema import TrainConfig
from ..config.sections.data import SUBSET_OPTIONS
from ..errors import DataError
from .images import probe_image

log = logging.getLogger("lorakit.data")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
NAMING_FIX = ("put the images in subfolders named <repeats>_<name>, e.g. '10_mychar/img001.png' "
              "(each image is used <repeats> times per epoch; a caption file img001.txt goes next to it)")


@dataclass
class ImageItem:
    path: Path
    caption: str
    repeats: int
    is_reg: bool
    subset: str  # the folder's name, e.g. "10_sks dog"
    size: tuple[int, int] | None = None  # upright (W, H), known after the scan
    # the subset's own caption/augmentation values (dataset_subsets keys such as flip_aug);
    # a key not here takes the run's value
    settings: dict[str, Any] = field(default_factory=dict)
    mask_path: Path | None = None  # masked_loss: its mask from the subset's conditioning_data_dir


@dataclass
class FolderSummary:
    name: str
    path: Path
    images: int
    repeats: int  # from the folder name
    is_reg: bool
    class_tokens: str
    samples: int  # images used per epoch after reg balancing (train: images * repeats)
    captions_missing: int = 0
    settings: dict[str, Any] = field(default_factory=dict)  # the subset's own caption/augmentation values


@dataclass
class DatasetIndex:
    items: list[ImageItem]
    folders: list[FolderSummary]
    num_train_images: int  # sum of repeats * images over the train folders (kohya's meaning)
    num_reg_images: int  # the same over the reg folders, before balancing (kohya's meaning)
    warnings: list[str] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # unreadable images: (path, why)
    # every scanned image with its caption, reg images that balancing left unused included
    # (sd-scripts counts tag frequency before balancing)
    _all_captioned: list[ImageItem] = field(default_factory=list, repr=False)
    # held-out images (validation_split or validation_data_dir); repeats play no part there
    validation_items: list[ImageItem] = field(default_factory=list)
    validation_split: float = 0.0
    validation_seed: int | None = None
    validation_source: str = ""  # "" | "validation_split" | "validation_data_dir"
    # the folders as scanned (items untouched by balancing or the split), to redo the split
    _train_folders: list = field(default_factory=list, repr=False)
    _reg_folders: list = field(default_factory=list, repr=False)
    _scan_warnings: list[str] = field(default_factory=list, repr=False)

    @property
    def train_items(self) -> list[ImageItem]:
        return [it for it in self.items if not it.is_reg]

    @property
    def reg_items(self) -> list[ImageItem]:
        return [it for it in self.items if it.is_reg]

    @property
    def num_reg_samples(self) -> int:
        """Reg samples per epoch after balancing (equals num_train_images when reg is used)."""
        return sum(it.repeats for it in self.items if it.is_reg)

    @property
    def num_samples(self) -> int:
        return sum(it.repeats for it in self.items)

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """ss_tag_frequency: {folder name: {tag: count}}, over train and reg folders.

        As sd-scripts: captions split on ",", stripped, lower-cased, empty tags skipped;
        every image counts once whatever its repeats; folders of the same name merge.
        """
        out: dict[str, dict[str, int]] = {}
        for f in self.folders:
            out.setdefault(f.name, {})
        for it in self._all_captioned or self.items:
            freq = out.setdefault(it.subset, {})
            for tag in it.caption.split(","):
                tag = tag.strip().lower()
                if tag:
                    freq[tag] = freq.get(tag, 0) + 1
        return out

    def dataset_dirs(self) -> dict[str, dict[str, int]]:
        """ss_dataset_dirs: train folders only (sd-scripts leaves reg folders out)."""
        out: dict[str, dict[str, int]] = {}
        for f in self.folders:
            if f.is_reg:
                continue
            name, i = f.name, 2
            while name in out:
                name, i = f"{f.name} ({i})", i + 1
            out[name] = {"n_repeats": f.repeats, "img_count": f.images}
        return out

    def describe(self) -> list[str]:
        """Lines for `lorakit plan`."""
        lines = []
        for f in self.folders:
            kind = "reg  " if f.is_reg else "train"
            own = "".join(f", {k}={v!r}" for k, v in f.settings.items())
            lines.append(f"{kind} {f.name}: {f.images} images x {f.repeats} repeats -> {f.samples} samples"
                         + (f" (own settings: {own[2:]})" if own else ""))
        lines.append(f"{self.num_train_images} train images with repeats, {self.num_reg_images} reg images"
                     + (f" (balanced to {self.num_reg_samples})" if self.num_reg_images else ""))
        if self.validation_source:
            how = (f"held out of training by validation_split {self.validation_split:g} "
                   f"(validation_seed {self.validation_seed})" if self.validation_source == "validation_split"
                   else "from validation_data_dir")
            lines.append(f"validation: {len(self.validation_items)} images {how}")
        return lines

    def apply_validation_split(self, fraction: float, seed: int) -> "DatasetIndex":
        """Hold out `fraction` of each train folder's images (in place; returns self).

        Per folder of n images, floor(n * fraction) are held out (so the train count is
        sd-scripts' ceil(n * (1 - split))): the folder's sorted images are shuffled with
        random.Random(seed) and the last ones are held out, as sd-scripts' split_train_val.
        Unlike sd-scripts the two parts never overlap. Reg folders are not split; the reg
        balancing is redone against the smaller train count. Idempotent for the same values.
        """
        fraction = float(fraction)
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"validation_split {fraction} is not in [0, 1)")
        if self.validation_source == ("validation_split" if fraction else "") and \
                (fraction, seed) == (self.validation_split, self.validation_seed):
            return self
        if not self._train_folders:
            raise ValueError("this index was not made by scan_folders; it cannot be split")
        new = _assemble(self._train_folders, self._reg_folders, self._scan_warnings, self.skipped, fraction, seed)
        self.__dict__.update(new.__dict__)
        return self

    def set_validation_items(self, items: list[ImageItem]) -> "DatasetIndex":
        """Use `items` (e.g. scanned from validation_data_dir) as the validation images (in place)."""
        if self.validation_source == "validation_split":
            raise ValueError("this index already holds images out by validation_split")
        self.validation_items = [replace(it, repeats=1) for it in items]
        self.validation_source = "validation_data_dir" if items else ""
        return self


def parse_folder_name(name: str) -> tuple[int, str] | None:
    """'10_sks dog' -> (10, 'sks dog'); '3_a_b' -> (3, 'a_b'); 'notes' -> None.

    sd-scripts: tokens = name.split("_"); repeats = int(tokens[0]); class tokens are the
    rest joined with "_".
    """
    tokens = name.split("_")
    try:
        repeats = int(tokens[0])
    except ValueError:
        return None
    return repeats, "_".join(tokens[1:])


def list_images(folder: Path) -> list[Path]:
    """Images directly in `folder` (not recursive), any case of the extension, sorted."""
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                  key=lambda p: p.name)


def read_caption(image: Path, caption_extension: str) -> str | None:
    """First line of `<stem><caption_extension>`, stripped; None when there is no such file.

    UTF-8 with or without a BOM; CRLF and CR line ends. An empty file is an empty caption.
    """
    cap = image.with_name(image.stem + caption_extension)
    if not cap.is_file():
        return None
    raw = cap.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"caption is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})",
                        file=str(cap), fix="re-save the caption file with UTF-8 encoding") from None
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")[0].strip()


@dataclass
class _Folder:
    path: Path
    repeats: int
    class_tokens: str
    is_reg: bool
    items: list[ImageItem]
    missing: int
    settings: dict[str, Any] = field(default_factory=dict)


def scan_folders(train_data_dir: str | Path | None, reg_data_dir: str | Path | None = None,
                 caption_extension: str = ".txt", check_images: bool = True, *,
                 validation_split: float = 0.0, validation_seed: int | None = None) -> DatasetIndex:
    """Scan the train (and reg) folders into a :class:`DatasetIndex`; see the module doc.

    With check_images=False images are listed but not opened (sizes stay None).
    validation_split holds images out (see DatasetIndex.apply_validation_split)."""
    warnings: list[str] = []
    skipped: list[tuple[Path, str]] = []
    if train_data_dir is None or str(train_data_dir) == "":
        raise DataError("is not set", key="train_data_dir",
                        fix="set train_data_dir to the folder that holds your <repeats>_<name> subfolders")
    probe = _prober(skipped) if check_images else None
    train = _scan_root(Path(train_data_dir), "train_data_dir", False, caption_extension, warnings, probe)
    reg = []
    if reg_data_dir is not None and str(reg_data_dir) != "":
        reg = _scan_root(Path(reg_data_dir), "reg_data_dir", True, caption_extension, warnings, probe)
    return _finish(train, reg, warnings, skipped, validation_split, validation_seed)


def scan_subsets(subsets: list[dict], check_images: bool = True, *, validation_split: float = 0.0,
                 validation_seed: int | None = None) -> DatasetIndex:
    """A :class:`DatasetIndex` from explicit subsets (config key dataset_subsets, e.g. from an
    sd-scripts dataset_config): each {image_dir, num_repeats, class_tokens, caption_extension,
    is_reg} and the subset's own caption/augmentation keys (SUBSET_OPTIONS), which its items
    carry as ImageItem.settings. Images directly in image_dir; a missing caption falls back to
    class_tokens; reg balancing, counts and the validation split as scan_folders."""
    warnings: list[str] = []
    skipped: list[tuple[Path, str]] = []
    probe = _prober(skipped) if check_images else None
    train: list[_Folder] = []
    reg: list[_Folder] = []
    for sub in subsets:
        path = Path(sub["image_dir"])
        if not path.is_dir():
            raise DataError("image_dir is not a folder" if path.exists() else "image_dir does not exist",
                            file=str(path), key="dataset_subsets", fix="check image_dir in the dataset config")
        images, sizes = _probed_images(path, probe)
        if not images:
            warnings.append(f"dataset_subsets: skipped '{path}': no images")
            continue
        folder = _read_folder(path, int(sub.get("num_repeats", 1)), sub.get("class_tokens") or "",
                              bool(sub.get("is_reg")), images, sub.get("caption_extension", ".caption"), warnings)
        folder.settings = {k: sub[k] for k in SUBSET_OPTIONS if sub.get(k) is not None}
        for it in folder.items:
            it.size = sizes.get(it.path)
            it.settings = folder.settings
        if sub.get("conditioning_data_dir"):
            pair_masks(folder.items, Path(sub["conditioning_data_dir"]), check_images)
        (reg if folder.is_reg else train).append(folder)
    if not train:
        raise DataError("no train images in dataset_subsets", key="dataset_subsets",
                        fix="give at least one subset with is_reg = false and images in its image_dir")
    return _finish(train, reg, warnings, skipped, validation_split, validation_seed)


def pair_masks(items: list[ImageItem], mask_dir: Path, check_sizes: bool = True) -> None:
    """Give each item the image of the same file stem in `mask_dir` as its loss mask (sd-scripts'
    conditioning_data_dir). As sd-scripts, an image without a mask and a mask without an image are
    errors; ours: a mask must have its image's size (it is cropped and flipped with it)."""
    from .images import probe_image

    where = dict(file=str(mask_dir), key="dataset_subsets")
    if not mask_dir.is_dir():
        raise DataError("conditioning_data_dir is not a folder", fix="check conditioning_data_dir in the dataset "
                        "config: the folder of masks named as their images", **where)
    masks = {p.stem: p for p in list_images(mask_dir)}
    missing = [it.path.name for it in items if it.path.stem not in masks]
    extra = sorted(set(masks) - {it.path.stem for it in items})
    wrong = []
    for it in items:
        it.mask_path = masks.get(it.path.stem)
        if check_sizes and it.mask_path is not None and it.size and probe_image(it.mask_path) != it.size:
            wrong.append(f"{it.mask_path.name} is {probe_image(it.mask_path)}, its image {it.size}")
    problems = ([f"no mask for {len(missing)} image(s): {', '.join(missing[:10])}"] if missing else []) + \
        ([f"{len(extra)} mask(s) without an image: {', '.join(extra[:10])}"] if extra else []) + \
        ([f"{len(wrong)} mask(s) of another size than their image: {'; '.join(wrong[:10])}"] if wrong else [])
    if problems:
        raise DataError("; ".join(problems), fix="give every image of the subset's image_dir one mask of the "
                        "same size and file name (any image type) in conditioning_data_dir, and nothing else",
                        **where)


def _finish(train: list, reg: list, warnings: list[str], skipped: list[tuple[Path, str]],
            validation_split: float, validation_seed: int | None) -> DatasetIndex:
    """One warning naming every unreadable image, then the index (shared by both scans)."""
    if skipped:
        warnings.insert(0, f"skipped {len(skipped)} unreadable image{'s' * (len(skipped) > 1)} "
                           "(replace or delete them): " + "; ".join(f"{p} ({why})" for p, why in skipped))
    index = _assemble(train, reg, warnings, skipped, validation_split, validation_seed)
    for w in index.warnings:
        log.warning(w)
    return index


def scan_config(cfg: TrainConfig, check_images: bool = True) -> DatasetIndex:
    """The dataset of a TrainConfig: its dataset_subsets when set, else its folders."""
    if cfg.dataset_subsets:
        return scan_subsets(cfg.dataset_subsets, check_images)
    return scan_folders(cfg.train_data_dir, cfg.reg_data_dir, cfg.caption_extension, check_images)


def split_folder(n: int, fraction: float, seed: int) -> list[int]:
    """Positions (in the folder's sorted order) of the images held out: floor(n * fraction) of
    them, the last ones of a random.Random(seed) shuffle (sd-scripts' order of operations)."""
    n_val = int(math.floor(n * fraction + 1e-9))
    if n_val <= 0:
        return []
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[n - n_val:])


def _assemble(train: list["_Folder"], reg: list["_Folder"], scan_warnings: list[str],
              skipped: list[tuple[Path, str]], validation_split: float = 0.0,
              validation_seed: int | None = None) -> DatasetIndex:
    """The index of scanned folders: the validation split, counts and reg balancing.

    Works on copies of the reg items (balancing raises their repeats), so the folders can
    be assembled again with another split."""
    warnings = list(scan_warnings)
    kept: list[list[ImageItem]] = []
    held: list[ImageItem] = []
    for f in train:
        out = set(split_folder(len(f.items), validation_split, validation_seed or 0)) if validation_split else set()
        kept.append([it for i, it in enumerate(f.items) if i not in out])
        held += [replace(it, repeats=1) for i, it in enumerate(f.items) if i in out]
    if validation_split and not held:
        warnings.append(f"validation_split {validation_split:g} holds out no image: each train folder has "
                        f"fewer than {math.ceil(1 / validation_split)} images; validation is skipped")
    num_train = sum(f.repeats * len(k) for f, k in zip(train, kept))
    num_reg = sum(f.repeats * len(f.items) for f in reg)
    reg_copies = [[replace(it, repeats=f.repeats) for it in f.items] for f in reg]
    reg_items = [it for group in reg_copies for it in group]
    used_reg = balance_reg_repeats(reg_items, num_train)
    if num_reg > num_train:
        unused = len(reg_items) - len(used_reg)
        warnings.append(f"{num_reg} reg images with repeats but only {num_train} train images: "
                        f"{unused} of the {len(reg_items)} reg images {'is' if unused == 1 else 'are'} not used")

    used_ids = {id(it) for it in used_reg}
    folders = []
    for f, k in zip(train, kept):
        folders.append(FolderSummary(f.path.name, f.path, len(k), f.repeats, False, f.class_tokens,
                                     f.repeats * len(k), f.missing, f.settings))
    for f, group in zip(reg, reg_copies):
        samples = sum(it.repeats for it in group if id(it) in used_ids)
        folders.append(FolderSummary(f.path.name, f.path, len(group), f.repeats, True, f.class_tokens,
                                     samples, f.missing, f.settings))
    items = [it for k in kept for it in k] + used_reg
    return DatasetIndex(items=items, folders=folders, num_train_images=num_train, num_reg_images=num_reg,
                        warnings=warnings, skipped=skipped, _all_captioned=[it for k in kept for it in k] + reg_items,
                        validation_items=held, validation_split=float(validation_split or 0.0),
                        validation_seed=validation_seed if validation_split else None,
                        validation_source="validation_split" if validation_split else "",
                        _train_folders=train, _reg_folders=reg, _scan_warnings=list(scan_warnings))


def balance_reg_repeats(reg_items: list[ImageItem], num_train_images: int) -> list[ImageItem]:
    """sd-scripts' balancing loop; returns the reg items used, with their repeats raised.

    First pass: take reg images in order, each with its folder's repeats, until the count
    reaches num_train_images (images after that point are not used). Following passes:
    add one repeat to each image in turn until the count reaches num_train_images.
    """
    used: list[ImageItem] = []
    if not reg_items:
        return used
    n = 0
    for it in reg_items:
        if n >= num_train_images:
            return used
        used.append(it)
        n += it.repeats
    i = 0
    while n < num_train_images:
        used[i % len(used)].repeats += 1
        n += 1
        i += 1
    return used


def _check_root(root: Path, key: str) -> list[Path]:
    if not root.exists():
        raise DataError("folder does not exist", file=str(root), key=key,
                        fix=f"check the path in {key}; it must be the folder that holds the <repeats>_<name> "
                            "subfolders")
    if not root.is_dir():
        raise DataError("is a file, not a folder", file=str(root), key=key,
                        fix=f"set {key} to the folder that holds the <repeats>_<name> subfolders")
    entries = sorted(root.iterdir(), key=lambda p: p.name)
    if not entries:
        raise DataError("folder is empty", file=str(root), key=key, fix=NAMING_FIX)
    return entries


def _prober(skipped: list[tuple[Path, str]]):
    def probe(path: Path) -> tuple[int, int] | None:
        try:
            return probe_image(path)
        except DataError as e:
            skipped.append((path, e.message))
            return None
    return probe


def _scan_root(root: Path, key: str, is_reg: bool, caption_extension: str,
               warnings: list[str], probe=None) -> list[_Folder]:
    entries = _check_root(root, key)
    subdirs = [p for p in entries if p.is_dir()]
    loose = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    unnamed = [p.name for p in subdirs if parse_folder_name(p.name) is None and not p.name.startswith(".")]
    named = [(p, parse_folder_name(p.name)) for p in subdirs if parse_folder_name(p.name) is not None]

    if not named:
        if loose:
            here = parse_folder_name(root.name)
            fix = (f"set {key} to the parent folder '{root.parent}'" if here and here[0] >= 1 else
                   f"move the images into a subfolder such as '{root / ('10_' + root.name)}'")
            raise DataError(f"holds {len(loose)} images directly but no <repeats>_<name> subfolder",
                            file=str(root), key=key, fix=fix)
        found = f" (found: {', '.join(unnamed)})" if unnamed else ""
        raise DataError(f"no <repeats>_<name> subfolders{found}", file=str(root), key=key, fix=NAMING_FIX)
    if unnamed:
        warnings.append(f"{key}: skipped folders without a <repeats>_ prefix: {', '.join(unnamed)}; "
                        f"rename them like '10_{unnamed[0]}' to train on them")
    if loose:
        warnings.append(f"{key}: {len(loose)} images directly in {root} are not used "
                        "(only images inside the <repeats>_<name> subfolders are)")

    folders: list[_Folder] = []
    empty, no_repeats = [], []
    for path, (repeats, class_tokens) in named:
        if repeats < 1:
            no_repeats.append(path.name)
            continue
        images, sizes = _probed_images(path, probe)
        if not images:
            empty.append(path.name)
            continue
        folder = _read_folder(path, repeats, class_tokens, is_reg, images, caption_extension, warnings)
        for it in folder.items:
            it.size = sizes.get(it.path)
        folders.append(folder)

    if no_repeats:
        why = (f"repeats must be 1 or more: {', '.join(no_repeats)} (the number before '_' is how often each "
               "image is used per epoch)")
        if not folders:
            raise DataError(why, file=str(root), key=key,
                            fix=f"rename it like '1_{parse_folder_name(no_repeats[0])[1]}' (or 10_..., as often as "
                                "each image should be used per epoch)")
        warnings.append(f"{key}: skipped {why}")
    if not folders:
        exts = " ".join(IMAGE_EXTENSIONS)
        raise DataError(f"no images in the subfolders {', '.join(p.name for p, _ in named)}",
                        file=str(root), key=key,
                        fix=f"put {exts} files directly inside the <repeats>_<name> folders (not in deeper folders)")
    if empty:
        warnings.append(f"{key}: skipped folders with no images: {', '.join(empty)}")
    return folders


def _probed_images(path: Path, probe) -> tuple[list[Path], dict[Path, tuple[int, int] | None]]:
    """The images of `path` and, with a `probe`, their sizes; images the probe cannot read are left out."""
    images = list_images(path)
    if probe is None:
        return images, {}
    sizes = {p: probe(p) for p in images}
    return [p for p in images if sizes[p] is not None], sizes


def _read_folder(path: Path, repeats: int, class_tokens: str, is_reg: bool, images: list[Path],
                 caption_extension: str, warnings: list[str]) -> _Folder:
    items, missing = [], []
    for img in images:
        cap = read_caption(img, caption_extension)
        if cap is None:
            missing.append(img.name)
            cap = class_tokens
        items.append(ImageItem(img, cap, repeats, is_reg, path.name))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        if class_tokens:
            warnings.append(f"{path.name}: {len(missing)} images have no {caption_extension} caption; "
                            f"using the folder's class tokens '{class_tokens}': {shown}")
        else:
            warnings.append(f"{path.name}: {len(missing)} images have no {caption_extension} caption and the "
                            f"folder name gives no class tokens; training them with an empty caption: {shown}")
    return _Folder(path, repeats, class_tokens, is_reg, items, len(missing))
