"""The benchmark's settings matrix: which data a model is fine-tuned on before it scores a target.

Domains come from the dataset table (``DatasetSpec.domain``, :func:`builtin_domains`; a bench config may add datasets or folders with
their domain). A setting turns (target, all datasets) into one or more *plans*; a plan is a list
of stages, each stage a list of datasets fine-tuned on together. Names say what a setting is;
the paper's letters are in docs/bench.md where the paper defines them.

| setting            | plans for target t (domain d)                                                 |
|--------------------|-------------------------------------------------------------------------------|
| zero_shot          | [] (no fine-tuning)                                                           |
| target             | [[t]]                                                                         |
| same_domain_other  | [[s]] for every other dataset s of domain d (one cell per source)            |
| other_domain       | [[s]] for every dataset s of another domain (one cell per source)            |
| domain_all         | [[all datasets of d, t included]]                                             |
| zero_resource      | [[all datasets of the other domains]] (nothing of d)                           |
| all                | [[every dataset]]                                                             |
| two_stage          | [[every dataset of the other domains], [t]] (``two_stage_order`` can flip it) |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The built-in domain table; bench configs extend it with `datasets: {name_or_folder: {domain: ...}}`.
def builtin_domains() -> dict[str, str]:
    """Domain of every registered dataset (``DatasetSpec.domain`` in recfm.data.registry)."""
    from recfm.data.registry import DATASETS

    return {name: spec.domain for name, spec in DATASETS.items()}


def folder_domain(path: str) -> str | None:
    """The domain a dataset folder's format implies (MIND: news, Goodreads: books, H&M: fashion,
    GroupLens: movies, Yelp: local businesses); None for other formats or a path that is not there."""
    from pathlib import Path

    from recfm.data.sources import UnknownFormatError, detect_format

    try:
        return detect_format(Path(path).expanduser()).domain
    except (OSError, UnknownFormatError):  # not a dataset folder: the caller asks for a domain
        return None


SETTINGS = ("zero_shot", "target", "same_domain_other", "other_domain", "domain_all", "zero_resource", "all",
            "two_stage")
Setting = Literal["zero_shot", "target", "same_domain_other", "other_domain", "domain_all", "zero_resource", "all",
                  "two_stage"]


@dataclass(frozen=True)
class Plan:
    """One fine-tuning plan: ``stages[i]`` are the datasets of stage i, trained on together."""

    setting: str
    stages: tuple[tuple[str, ...], ...]

    @property
    def key(self) -> str:
        """Names the training data, so that cells with the same plan share one fine-tuned adapter."""
        return "zero-shot" if not self.stages else " > ".join("+".join(s) for s in self.stages)

    @property
    def source(self) -> str:
        """Row label of the transfer matrix."""
        return self.key


def plans_for(setting: str, target: str, domains: dict[str, str], two_stage_order: str = "others_then_target") -> list[Plan]:
    """The plans of ``setting`` for ``target`` over the datasets in ``domains`` (name -> domain)."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")
    if target not in domains:
        raise ValueError(f"target {target!r} has no domain; add it under `datasets:` with a domain")
    d = domains[target]
    same = [s for s in domains if domains[s] == d and s != target]
    others = [s for s in domains if domains[s] != d]
    one = lambda *stages: Plan(setting, tuple(tuple(s) for s in stages))  # noqa: E731
    if setting == "zero_shot":
        return [one()]
    if setting == "target":
        return [one([target])]
    if setting == "same_domain_other":
        return [one([s]) for s in same]
    if setting == "other_domain":
        return [one([s]) for s in others]
    if setting == "domain_all":
        return [one([s for s in domains if domains[s] == d])]
    if setting == "zero_resource":
        return [one(others)] if others else []
    if setting == "all":
        return [one(list(domains))]
    if not others:
        return []
    if two_stage_order == "others_then_target":
        return [one(others, [target])]
    if two_stage_order == "target_then_others":
        return [one([target], others)]
    raise ValueError("two_stage_order must be others_then_target or target_then_others")
