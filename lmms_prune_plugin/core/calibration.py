"""Calibration: one prefill pass over a domain's documents through a harness (a
:class:`~lmms_prune_plugin.harnesses.base.CalibrationSource`: the exact inputs that harness
builds), with capture on; its statistics are kept in memory and in the on-disk cache.

Only :mod:`.planner` builds a :class:`Calibrator`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from loguru import logger

from lmms_prune_plugin.core.args import is_none, parse_bool
from lmms_prune_plugin.core.cache import Cache, key
from lmms_prune_plugin.core.capture import AnswerReference, LayerCapture
from lmms_prune_plugin.core.distributed import all_reduce, is_main, process_group
from lmms_prune_plugin.core.options import OptionRecord, option
from lmms_prune_plugin.core.similarity import TOKEN_SELECTIONS
from lmms_prune_plugin.core.stats import LayerStatistics
from lmms_prune_plugin.harnesses.base import CalibrationDocs, CalibrationSource
from lmms_prune_plugin.surgery.layers import decoder_layers_removed, removal_checks_in


@dataclass(frozen=True)
class CalibrationSet:
    """A named calibration set: the lmms-eval task behind it, the domain it stands for, and the
    folder of its task YAML when lmms-eval does not ship it (added to the include paths)."""

    name: str
    domain: str
    task: str
    offline: bool = True
    description: str = ""
    task_folder: str | None = None


#: Real benchmarks that lmms-eval ships (they need the hub); the packaged offline sets are
#: registered by the demo (lmms_prune_plugin.demo.plugin) like any plugin's.
BUILTIN_CALIBRATION_SETS = (
    CalibrationSet("mathvista", "math", "mathvista_testmini", False, "MathVista testmini"),
    CalibrationSet("mathverse", "math", "mathverse_testmini", False, "MathVerse testmini"),
    CalibrationSet("mathvision", "math", "mathvision_testmini", False, "MATH-Vision testmini"),
    CalibrationSet("scienceqa", "nonmath", "scienceqa_img", False, "ScienceQA (image subset)"),
    CalibrationSet("gqa", "nonmath", "gqa", False, "GQA"),
    CalibrationSet("ai2d", "nonmath", "ai2d", False, "AI2D diagrams"),
)
DEFAULT_SETS = {"math": "prune_calib_math", "nonmath": "prune_calib_nonmath"}


def _calibration_set_name(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(
            f"{name}={value!r} is not allowed; give a calibration set or task name, or none"
        )
    return value


def _cache_value(name: str, value: object) -> object:
    _parse_cache(value)  # checked now, resolved by CalibrationOptions.resolve
    return value


@dataclass(frozen=True)
class CalibrationOptions(OptionRecord):
    """Calibration as users give it (model_args and CLI flags)."""

    title = "calibration options"
    calib_math: str | None = option(
        DEFAULT_SETS["math"],
        "math calibration set or task, or none",
        none=True,
        parse=_calibration_set_name,
    )
    calib_nonmath: str | None = option(
        DEFAULT_SETS["nonmath"],
        "non-math calibration set or task, or none",
        none=True,
        parse=_calibration_set_name,
    )
    calib_limit: int | None = option(64, "calibration samples per domain, or none", minimum=1)
    tokens: str = option("all", "which tokens are measured", choices=TOKEN_SELECTIONS)
    include_path: str | None = option(None, "extra lmms-eval task folder", none=True)
    plan_cache: object = option(True, "true, false, or a cache folder", parse=_cache_value)

    def resolve(self) -> CalibrationConfig:
        """The checked folders and the cache setting, as the core uses them."""
        named = (("math", self.calib_math), ("nonmath", self.calib_nonmath))
        sets = {d: v for d, v in named if v is not None}
        use_cache, cache_dir = _parse_cache(self.plan_cache)
        return CalibrationConfig(
            sets, self.calib_limit, self.tokens, self.include_path, cache_dir, use_cache
        )


@dataclass(frozen=True)
class CalibrationConfig:
    """What calibration runs on: sets per domain, sample limit, tokens, task folders, cache.

    Built by :meth:`parse` from model_args or CLI flags alike, and validated there, once.
    """

    sets: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_SETS))
    limit: int | None = 64
    tokens: str = "all"
    include_path: str | None = None
    cache_dir: str | None = None  # None: the default cache folder
    use_cache: bool = True

    @classmethod
    def parse(cls, **raw: object) -> CalibrationConfig:
        """From model_args or CLI flags (:class:`CalibrationOptions`' fields)."""
        return CalibrationOptions.parse(**raw).resolve()

    @property
    def task_paths(self) -> list[str]:
        """The task folders of the registered calibration sets, then ``include_path``."""
        from lmms_prune_plugin.core.plugins import get_calibration_sets

        found = [c.task_folder for c in get_calibration_sets().values() if c.task_folder]
        extra = [self.include_path] if self.include_path else []
        return list(dict.fromkeys([*found, *extra]))

    def cache(self) -> Cache | None:
        return Cache(self.cache_dir) if self.use_cache else None


def _parse_cache(value: object) -> tuple[bool, str | None]:
    """``plan_cache``: a boolean (default folder or off), none (off), or a folder path."""
    if value is None:
        return True, None
    if is_none(value):
        return False, None
    try:
        return parse_bool("plan_cache", value), None
    except ValueError:
        pass
    text = str(value)
    path = Path(text).expanduser()
    if not path.exists() and "/" not in text and not text.startswith("~"):
        # A bare word that is no boolean is more likely a typo than a new folder in the cwd.
        raise ValueError(
            f"plan_cache={value!r} is not allowed; give true, false or a cache folder path "
            f"(./{text} for a new folder here)"
        )
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"plan_cache={value!r} is not allowed: it is a file; give true, false or a cache folder"
        )
    return True, str(path)


def run_capture(
    source: CalibrationSource,
    model: torch.nn.Module,
    docs: CalibrationDocs,
    tokens: str = "all",
    block_sizes: tuple[int, ...] = (),
    prefill_only: bool = True,
    **capture_options,
) -> LayerStatistics:
    """One prefill pass over a domain's documents through the harness, hooks on.
    ``prefill_only``: ``generate`` runs the prompt's forward alone (:func:`generate_as_prefill`);
    False: the model's own."""
    return _capture_pass(source, model, docs, tokens, block_sizes, prefill_only, **capture_options)[
        0
    ]


def _capture_pass(
    source: CalibrationSource,
    model,
    docs: CalibrationDocs,
    tokens: str,
    block_sizes: tuple[int, ...],
    prefill_only: bool = True,
    **capture_options,
) -> tuple[LayerStatistics, LayerCapture]:
    generate = generate_as_prefill(model) if prefill_only else nullcontext()
    with (
        torch.inference_mode(),
        generate,
        LayerCapture(model, tokens=tokens, block_sizes=block_sizes, **capture_options) as cap,
    ):
        source.run(docs, int(getattr(source, "batch_size", 1)))
    stats = cap.statistics()
    if stats.samples != docs.count:
        raise ValueError(
            f"calibration task {docs.task!r}: {source.harness} ran prefill forwards for "
            f"{stats.samples} samples of the {docs.count} documents it was given (a harness "
            "model that skips or repeats documents, or hides a failed generate); these "
            "statistics would not be the task's"
        )
    return all_reduce(stats), cap


def _generation_names(model: torch.nn.Module) -> frozenset[str]:
    """What a wrapper may pass to ``generate`` that is not a model input: generate's own
    parameters and every generation setting."""
    import inspect

    from transformers import GenerationConfig

    names = set(GenerationConfig().to_dict()) | set(inspect.signature(model.generate).parameters)
    return frozenset(names - {"inputs", "kwargs"})


@contextmanager
def generate_as_prefill(model: torch.nn.Module) -> Iterator[None]:
    """Within the block ``model.generate`` runs the prompt's forward alone (no KV cache, logits
    of the last position) and answers with its greedy token.

    Calibration measures the prefill forward only, and this is that forward on the inputs the
    wrapper built, so the statistics are those of ``generate``; its set-up per call
    (configuration copies, a KV cache, logits processors) is skipped. Every argument that is not
    a generation setting reaches the forward, which refuses what it does not take.
    """
    import inspect

    skip = _generation_names(model)
    takes = inspect.signature(model.forward).parameters
    keep = {"logits_to_keep": 1} if "logits_to_keep" in takes else {}

    def prefill(*args, **kwargs):
        ids = args[0] if args else kwargs.pop("inputs", None)
        if ids is not None:
            kwargs["input_ids"] = ids
        inputs = {k: v for k, v in kwargs.items() if k not in skip}
        logits = getattr(model(**inputs, use_cache=False, **keep), "logits", None)
        if logits is None:
            raise ValueError(f"{type(model).__name__} returned no logits to answer generate with")
        token = logits[:, -1:].argmax(-1)
        ids = inputs.get("input_ids")
        seq = token if ids is None else torch.cat([ids, token.to(ids)], dim=1)
        if kwargs.get("return_dict_in_generate"):
            from transformers.generation.utils import GenerateDecoderOnlyOutput

            return GenerateDecoderOnlyOutput(sequences=seq)
        return seq

    with generate_replaced(model, prefill):
        yield


@contextmanager
def generate_replaced(model: torch.nn.Module, generate) -> Iterator[None]:
    """``model.generate`` is ``generate`` within the block, the model's own after it."""
    had, saved = "generate" in vars(model), vars(model).get("generate")
    model.generate = generate
    try:
        yield
    finally:
        if had:
            model.generate = saved
        else:
            del model.generate


@dataclass(frozen=True)
class DomainCalibration:
    """One domain's statistics and where they came from."""

    stats: LayerStatistics
    task: str
    samples: int  # over all ranks
    fingerprint: str
    per_sample: tuple[LayerStatistics, ...] = ()  # in the order the samples reached the model

    def to_dict(self) -> dict:
        return {
            "stats": self.stats.to_dict(),
            "task": self.task,
            "samples": self.samples,
            "fingerprint": self.fingerprint,
            "per_sample": [s.to_dict() for s in self.per_sample],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> DomainCalibration:
        return cls(
            LayerStatistics.from_dict(data["stats"]),
            str(data["task"]),
            int(data["samples"]),
            str(data["fingerprint"]),
            tuple(LayerStatistics.from_dict(x) for x in data.get("per_sample", ())),
        )

    def lacks(self, block_sizes: tuple[int, ...], outputs: bool, per_sample: bool) -> bool:
        """Whether these statistics miss a measurement asked for (then the pass reruns)."""
        s = self.stats
        return (
            not set(block_sizes) <= set(s.angular_sum)
            or (outputs and s.divergence_samples <= 0)
            or (per_sample and not self.per_sample)
        )

    def problem(self, num_layers: int, task: str) -> str | None:
        """Why this (cached) calibration cannot serve a model of ``num_layers``, or None."""
        s = self.stats
        if s.num_layers != num_layers:
            return f"it holds {s.num_layers} layers, the model has {num_layers}"
        if self.task != task:
            return f"it is for task {self.task!r}, not {task!r}"
        if s.tokens <= 0 or s.samples <= 0 or self.samples <= 0:
            return f"it holds {s.tokens} tokens of {s.samples} samples"
        values = [*s.cos_sum, *(v for vs in s.angular_sum.values() for v in vs)]
        if not all(math.isfinite(v) for v in values):
            return "it holds non-finite sums"
        if any(abs(c) > s.tokens * (1 + 1e-6) for c in s.cos_sum):
            return "its cosine sums exceed its token count"
        if not math.isfinite(s.divergence_sum) or s.divergence_sum < 0:
            return "it holds a negative or non-finite divergence"
        if self.per_sample and len(self.per_sample) != s.samples:
            return f"it holds {len(self.per_sample)} per-sample statistics for {s.samples} samples"
        return None


class Calibrator:
    """Calibrates a model through a harness on the config's tasks: one prefill pass per domain.

    Results are kept in memory and in the on-disk cache under a key made of the run (model,
    wrapper, its arguments, dtype, processor), the task and its content fingerprint, ``limit``,
    the token selection and the layers removed before measuring, so a cache hit needs neither
    lmms-eval's TaskManager nor a forward. Angular block sizes accumulate: a request for new
    sizes reruns the pass once for the union; so do the output divergence and per-sample
    statistics. ``forwards`` counts the prefill forwards run.

    The output divergence of a model with layers removed is measured against the answer
    distributions of the unpruned model, recorded by a pass over it (kept in memory only: they
    are samples x vocabulary floats) and run again when a later process needs them.
    """

    def __init__(
        self,
        source: CalibrationSource,
        model: torch.nn.Module,
        config: CalibrationConfig,
        run_key: str,
    ):
        self.source, self.model, self.config = source, model, config
        self.cache = config.cache()
        self.run_key = run_key
        self.forwards = 0
        self._done: dict[tuple[str, tuple[int, ...]], DomainCalibration] = {}
        self._reference: dict[str, AnswerReference] = {}
        self._docs: dict[str, CalibrationDocs] = {}

    def key(self, domain: str, removed: tuple[int, ...] = ()) -> str:
        """Cache key of a domain's calibration, computed without loading any task."""
        c = self.config
        return key(
            kind="calibration",
            harness=self.source.harness,
            run=self.run_key,
            task=c.sets[domain],
            limit=c.limit,
            tokens=c.tokens,
            tasks=[self.source.data_key()],
            removed=list(removed),
        )

    def documents(self, domain: str) -> CalibrationDocs:
        """The domain's documents, built once per calibrator (every pass over a domain sees the
        same samples in the same order)."""
        if domain not in self._docs:
            rank, world = process_group()
            self._docs[domain] = self.source.documents(
                self.config.sets[domain], self.config.limit, rank, world, f"calib_{domain}"
            )
        return self._docs[domain]

    def _cached(self, domain: str, k: str, num_layers: int) -> DomainCalibration | None:
        data = self.cache.get("calibration", k) if self.cache is not None else None
        if data is None:
            return None
        path = self.cache.path("calibration", k)
        try:
            have = DomainCalibration.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            logger.warning(
                f"lmms-prune: cache entry {path} is not a calibration ({err!r}); recomputing it"
            )
            return None
        problem = have.problem(num_layers, self.config.sets[domain])
        if problem:
            logger.warning(
                f"lmms-prune: cache entry {path} does not fit ({problem}); recomputing it"
            )
            return None
        return have

    def calibrate(
        self,
        domain: str,
        block_sizes: tuple[int, ...] = (),
        removed: tuple[int, ...] = (),
        outputs: bool = False,
        per_sample: bool = False,
        _rerun: bool = False,
    ) -> DomainCalibration:
        """A domain's calibration of the model without ``removed``: from memory, else the disk
        cache, else one prefill pass. ``outputs``: with the answer-position KL divergence from
        the unpruned model; ``per_sample``: with one statistics per sample."""
        removed = tuple(sorted(removed))
        num_layers = _num_layers(self.model) - len(removed)
        k = self.key(domain, removed)
        have = self._done.get((domain, removed)) or self._cached(domain, k, num_layers)
        if have is None or _rerun or have.lacks(block_sizes, outputs, per_sample):
            if per_sample and process_group()[1] > 1:
                raise ValueError(
                    "per-sample calibration statistics (bootstrap) need one process; run without "
                    "torchrun / accelerate"
                )
            old = have.stats if have else None
            blocks = tuple(sorted(set(block_sizes) | set(old.angular_sum if old else ())))
            outputs = outputs or bool(old and old.divergence_samples)
            per_sample = per_sample or bool(have and have.per_sample)
            options: dict = {"per_sample": per_sample}
            if outputs and not removed:
                options["record_answers"] = True
            elif outputs:
                options["reference"] = self._answer_reference(domain)
            docs = self.documents(domain)
            with removal_checks_in(self.cache), decoder_layers_removed(self.model, removed):
                stats, cap = _capture_pass(
                    self.source, self.model, docs, self.config.tokens, blocks, **options
                )
            self.forwards += stats.forwards
            if cap.answers is not None:
                self._reference[domain] = cap.answers
            if "reference" in options and cap.compared != len(options["reference"]):
                raise ValueError(
                    f"calib_{domain}: the output comparison saw {cap.compared} samples, the "
                    f"reference {len(options['reference'])}"
                )
            rows = tuple(cap.sample_statistics()) if per_sample else ()
            have = DomainCalibration(
                stats, self.config.sets[domain], docs.total, docs.fingerprint, rows
            )
            problem = have.problem(num_layers, self.config.sets[domain])
            if problem:
                raise ValueError(
                    f"calib_{domain}={self.config.sets[domain]!r}: calibration gave no usable statistics ({problem})"
                )
            if self.cache is not None and is_main():
                self.cache.put("calibration", k, have.to_dict())
        self._done[(domain, removed)] = have
        return have

    def _answer_reference(self, domain: str) -> AnswerReference:
        if domain not in self._reference:  # the unpruned pass with outputs records them
            self.calibrate(domain, (), (), outputs=True, _rerun=True)
            if domain not in self._reference:  # calibrate records it whenever it is missing
                raise RuntimeError(f"no reference answer distributions for {domain}")
        return self._reference[domain]


def _num_layers(model: torch.nn.Module) -> int:
    from lmms_prune_plugin.surgery.layers import find_decoder_layers

    return len(find_decoder_layers(model))


#: The model_args and CLI flags of calibration.
CALIBRATION_ARGS = CalibrationOptions.names()
