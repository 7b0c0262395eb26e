"""The checkpoint format: weights plus everything inference needs to use them correctly.

A checkpoint is saved with `torch.save` as a plain dict of str/int/float/list/dict and tensors, so
`torch.load(..., weights_only=True)` can read it without unpickling arbitrary code. It names the
features it was trained on (inference selects them from the cube by name), their normalisation, the
value that replaces missing inputs, and the model's receptive field (inference sizes its halo from it).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from glacier_stac.labels import BASE_CLASSES, CLASSES
from glacier_stac.models import get_model

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A trained (or freshly initialised) model with its input contract and provenance."""

    model: str
    state_dict: dict[str, torch.Tensor]
    features: list[str]
    mean: list[float]
    std: list[float]
    receptive_field: int
    patch_size: int = 256  # training patch side, pixels
    nan_fill: float = 0.0  # value of a missing input after normalisation (0 = the feature mean)
    required_features: list[str] | None = None  # NaN in any of these => pixel invalid; None = all features
    # output channels in order; a checkpoint without the field (all before rock glaciers) has four
    classes: list[str] = field(default_factory=lambda: list(BASE_CLASSES))
    model_kwargs: dict = field(default_factory=dict)
    divisor: int = 1
    # provenance
    data: str = ""
    seed: int | None = None
    command: str = ""
    metrics: dict = field(default_factory=dict)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    version: str = ""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        n = len(self.features)
        if n == 0:
            raise ValueError("checkpoint has no features")
        if len(set(self.features)) != n:
            dup = sorted({f for f in self.features if self.features.count(f) > 1})
            raise ValueError(f"checkpoint features are duplicated: {dup}")
        if len(self.mean) != n or len(self.std) != n:
            raise ValueError(f"checkpoint has {n} features but {len(self.mean)} means and {len(self.std)} stds")
        if any(not s > 0 for s in self.std):
            bad = [f for f, s in zip(self.features, self.std, strict=True) if not s > 0]
            raise ValueError(f"checkpoint std must be positive; not for {bad}")
        # the model's output index is the Label code (infer, the store and OBIA read it so): the
        # classes must be the vocabulary's first ones, in its order
        self.classes = [str(c) for c in self.classes]
        if len(self.classes) < 2 or self.classes != list(CLASSES[:len(self.classes)]):
            raise ValueError(f"checkpoint classes {self.classes} must be the first classes of {list(CLASSES)}, "
                             "in that order (a model's output index is the Label code)")
        unknown = set(self.required_features or ()) - set(self.features)
        if unknown:
            raise ValueError(f"required_features {sorted(unknown)} are not among the checkpoint features")
        if not self.version:
            from glacier_stac import __version__

            self.version = __version__

    @classmethod
    def from_model(cls, model: nn.Module, name: str, features: list[str], mean: list[float],
                   std: list[float], model_kwargs: dict | None = None, **kw) -> Checkpoint:
        """Wrap a model built by `get_model(name, len(features), ..., **model_kwargs)`."""
        return cls(
            model=name, state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            features=list(features), mean=[float(m) for m in mean], std=[float(s) for s in std],
            receptive_field=int(model.receptive_field), divisor=int(model.divisor),
            model_kwargs=dict(model_kwargs or {}), **kw,
        )

    @property
    def required(self) -> list[str]:
        return list(self.required_features) if self.required_features is not None else list(self.features)

    def build_model(self) -> nn.Module:
        """The model with its weights, in eval mode (BatchNorm uses its running statistics)."""
        model = get_model(self.model, len(self.features), len(self.classes), **self.model_kwargs)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as e:
            raise ValueError(f"checkpoint weights do not fit model {self.model!r} {self.model_kwargs}: {e}") from e
        if model.receptive_field > self.receptive_field:
            raise ValueError(
                f"checkpoint states a receptive field of {self.receptive_field} px but model {self.model!r} "
                f"has {model.receptive_field} px"
            )
        return model.eval()

    def check_features(self, names, *, exact: bool = False) -> list[int]:
        """Indices of the checkpoint's features in `names` (the cube's `feature` coordinate).

        Missing features are always an error. With `exact=True` the cube must hold exactly the
        checkpoint's features in the same order (extra or misordered features are errors too).
        """
        names = [str(n) for n in names]
        missing = [f for f in self.features if f not in names]
        problems = []
        if missing:
            problems.append(f"missing {missing}")
        if exact:
            extra = [n for n in names if n not in self.features]
            if extra:
                problems.append(f"extra {extra}")
            if not missing and not extra and names != self.features:
                wrong = [f"{a}!={b}@{i}" for i, (a, b) in enumerate(zip(names, self.features, strict=True)) if a != b]
                problems.append(f"misordered (cube!=checkpoint at position) {wrong}")
        if len(set(names)) != len(names):
            problems.append(f"duplicated in cube {sorted({n for n in names if names.count(n) > 1})}")
        if problems:
            raise ValueError(
                f"cube features do not match checkpoint {self.model!r}: " + "; ".join(problems)
                + f". checkpoint expects {self.features}, cube has {names}"
            )
        return [names.index(f) for f in self.features]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["state_dict"] = dict(self.state_dict)  # asdict deep-copies tensors; keep them as they are
        return d

    def digest(self) -> str:
        """Content hash of weights and input contract (the model cache key for in-memory checkpoints)."""
        h = hashlib.sha256()
        for k in sorted(self.state_dict):
            h.update(k.encode())
            h.update(self.state_dict[k].detach().cpu().contiguous().numpy().tobytes())
        h.update(repr((self.model, self.model_kwargs, self.features, self.mean, self.std, self.nan_fill,
                       self.required_features, self.classes)).encode())
        return h.hexdigest()[:16]


def save(ckpt: Checkpoint, path: str | Path) -> Path:
    """Write a checkpoint (atomically: a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt.to_dict(), tmp)
    tmp.replace(path)
    return path


def load(path: str | Path) -> Checkpoint:
    """Read a checkpoint with `weights_only=True` (no arbitrary code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable glacier_stac checkpoint: {e}") from e
    if not isinstance(d, dict) or "state_dict" not in d or "features" not in d:
        raise ValueError(f"{path} is not a glacier_stac checkpoint (no state_dict/features)")
    if d.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format {d['format_version']}; this glacier_stac reads "
                         f"<= {FORMAT_VERSION}")
    known = {f.name for f in fields(Checkpoint)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"{path} has unknown checkpoint fields {sorted(unknown)}")
    return Checkpoint(**d)
