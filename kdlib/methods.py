"""The knowledge-distillation methods, each declared once, and the runs built from them.

A :class:`Method` is everything kdlib needs to know of a way to train the student: its name
(``--method`` and the run folder), the name tables and figures give it, its α / β / T defaults
and where they come from, what it reads of the teacher, the trainable modules it adds on the
student's side (its adapters, if any), and its loss terms, each a pure function of
:mod:`kdlib.losses` whose name is also its history column (``train_<term>``, ``val_<term>``).
Its objective is always

    L = α·L_ce + β·Σ_term L_term        (no KD: L = L_ce)

The settings checks, the CLI, the trainer, the history, the report, the plots and ``make bench``
iterate over :data:`METHODS`; :func:`register` adds a method from outside kdlib (see
``docs/adding-a-method.md``). A :class:`Variant` is a method with settings changed, a run of
its own: response KD in Hinton's form, response KD from the teacher-output cache, and each KD
method with the data set's unlabeled images added.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from . import losses
from .adapters import cirkd_projector, level_adapters
from .conventions import VOID

# What a method may read of the frozen teacher: its logits, its features projected to the
# student's widths by the wrapper's trainable 1×1 convolutions, or its own (raw) features.
TEACHER_OUTPUTS = ("logits", "features", "raw_features")
GROUPS = ("report", "new")  # the report's comparison (`make demo`), or beyond it (`make methods`)

# A loss term: (student outputs, teacher outputs, the labels, the pixels it may see, the
# objective) -> scalar.
Term = Callable[[dict, dict, torch.Tensor, torch.Tensor, "Objective"], torch.Tensor]

# Builds a method's adapters: (the student's feature widths, the teacher's) -> a module that maps
# the student's feature maps to what its terms read as ``s["adapted"]`` (kdlib.adapters.Adapters).
AdaptersBuilder = Callable[[tuple[int, ...], tuple[int, ...]], nn.Module]


@dataclass(frozen=True)
class Method:
    name: str
    display: str
    defaults: dict  # alpha, beta, temperature: what a Config left at None takes
    source: str  # where the defaults come from
    reads: tuple[str, ...] = ()  # of TEACHER_OUTPUTS; none: the teacher is never built
    terms: dict[str, Term] = field(default_factory=dict)  # summed in this order
    group: str = "new"
    # trainable modules on the student's side, trained, saved and resumed with the student but
    # no part of it (evaluation and parameter counts never see them); None: no adapters
    adapters: AdaptersBuilder | None = None
    # the paper's settings that are constants of its terms rather than Config settings: recorded
    # in every run's config.json (``method_constants``) beside α, β and T
    constants: dict = field(default_factory=dict)

    @property
    def needs_teacher(self) -> bool:
        return bool(self.reads)

    @property
    def trains_projections(self) -> bool:
        """Whether the teacher wrapper's projections are trained with the student."""
        return "features" in self.reads

    @property
    def reads_features(self) -> bool:
        """Whether the teacher must return its feature maps, not only its logits."""
        return "features" in self.reads or "raw_features" in self.reads

    @property
    def cacheable(self) -> bool:
        """Whether it reads nothing of the teacher but its logits, so a cache of them serves it."""
        return self.reads == ("logits",)


@dataclass(frozen=True)
class Variant:
    name: str
    method: str  # the Method it trains
    display: str
    overrides: dict = field(default_factory=dict)  # Config settings
    unlabeled: bool = False  # the data set's split of unlabeled images added
    cached: bool = False  # the teacher's logits from the cache of the runs folder
    extra: bool = True  # trained by `make methods` rather than `make demo`


METHODS: dict[str, Method] = {}
VARIANTS: dict[str, Variant] = {}


def register(method: Method) -> Method:
    """Add ``method`` (and its ``<name>_unlabeled`` variant when it reads the teacher) to the
    registry; everything that iterates over methods sees it from then on."""
    problems = []
    if method.name in METHODS or method.name in VARIANTS:
        problems.append(f"the name {method.name!r} is taken")
    if set(method.defaults) != {"alpha", "beta", "temperature"}:
        problems.append(f"defaults must give alpha, beta and temperature, got {sorted(method.defaults)}")
    if not set(method.reads) <= set(TEACHER_OUTPUTS):
        problems.append(f"reads {method.reads}: choose among {TEACHER_OUTPUTS}")
    if bool(method.terms) != method.needs_teacher:
        problems.append("a method has loss terms exactly when it reads the teacher")
    if method.group not in GROUPS:
        problems.append(f"group {method.group!r}: choose one of {GROUPS}")
    if method.adapters is not None and not method.reads_features:
        problems.append("adapters are built to the teacher's feature widths: the method must read its features")
    if problems:
        raise ValueError(f"register({method.name!r}): " + "; ".join(problems))
    METHODS[method.name] = method
    if method.needs_teacher:
        register_variant(
            Variant(f"{method.name}_unlabeled", method.name, f"{method.display} + unlabeled images", unlabeled=True)
        )
    return method


def register_variant(variant: Variant) -> Variant:
    if variant.name in METHODS or variant.name in VARIANTS:
        raise ValueError(f"register_variant({variant.name!r}): the name is taken")
    if variant.method not in METHODS:
        raise ValueError(f"register_variant({variant.name!r}): unknown method {variant.method!r}")
    VARIANTS[variant.name] = variant
    return variant


def get(name: str) -> Method:
    """The method called ``name``; the error lists the registered ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def names(group: str | None = None) -> tuple[str, ...]:
    """The registered methods (of ``group``), in the order they were declared."""
    return tuple(n for n, m in METHODS.items() if group is None or m.group == group)


def kd_names() -> tuple[str, ...]:
    """The methods that distil (read the teacher)."""
    return tuple(n for n, m in METHODS.items() if m.needs_teacher)


def run_names() -> tuple[str, ...]:
    """Every run name, in the order tables list them: each method, then the variants of
    settings, then each method with unlabeled images."""
    unlabeled = [v for v in VARIANTS.values() if v.unlabeled]
    unlabeled.sort(key=lambda v: list(METHODS).index(v.method))
    return (*METHODS, *(n for n, v in VARIANTS.items() if not v.unlabeled), *(v.name for v in unlabeled))


def method_of(run: str) -> Method:
    """The method a run name trains."""
    return get(VARIANTS[run].method if run in VARIANTS else run)


def display_name(run: str) -> str:
    """What tables and figures call a run name (the name itself when it is not registered)."""
    if run in VARIANTS:
        return VARIANTS[run].display
    return METHODS[run].display if run in METHODS else run


def is_extra(run: str) -> bool:
    """Whether a run name is one of `make methods`' rows rather than `make demo`'s."""
    if run in VARIANTS:
        return VARIANTS[run].extra
    return run in METHODS and METHODS[run].group != "report"


def term_names() -> tuple[str, ...]:
    """Every registered loss term once, in declaration order: the history's columns."""
    seen = {}
    for method in METHODS.values():
        seen |= dict.fromkeys(method.terms)
    return tuple(seen)


# --------------------------------------------------------------------------- the objective


@dataclass(frozen=True)
class Objective:
    """One method's objective with its α, β, T (and term settings) bound:
    ``objective(student_out, teacher_out, target, kd_mask)`` -> (total, detached parts).
    ``student_out`` holds ``"adapted"`` (its features through the method's adapters) when the
    method has adapters: the trainer computes it."""

    method: Method
    alpha: float
    beta: float
    temperature: float
    scale_by_t2: bool = False
    pairwise_grid: int = losses.PAIRWISE_GRID

    def __call__(self, student_out: dict, teacher_out: dict | None, target: torch.Tensor, kd_mask=None):
        ce = losses.supervised_loss(student_out["out"], target)
        parts = {"ce": ce}
        if not self.method.needs_teacher:
            total = ce
        else:
            if teacher_out is None:
                raise ValueError(f"the objective of method {self.method.name!r} needs the teacher's outputs")
            seen = target != VOID if kd_mask is None else kd_mask
            terms = {
                name: term(student_out, teacher_out, target, seen, self) for name, term in self.method.terms.items()
            }
            parts |= terms
            total = self.alpha * ce + self.beta * sum(terms.values())
        parts["total"] = total
        return total, {k: v.detach() for k, v in parts.items()}


def objective(cfg) -> Objective:
    """The objective of a resolved Config (``Config.resolved()`` fills in the method's α, β, T)."""
    unset = [k for k in ("alpha", "beta", "temperature") if getattr(cfg, k) is None]
    if unset:
        raise ValueError(f"objective: {', '.join(unset)} not set; pass cfg.resolved(), which takes the method's")
    return Objective(get(cfg.method), cfg.alpha, cfg.beta, cfg.temperature, cfg.scale_by_t2, cfg.pairwise_grid)


def distillation_loss(
    method: str,
    student_out: dict,
    teacher_out: dict | None,
    target: torch.Tensor,
    alpha: float | None = None,
    beta: float | None = None,
    temperature: float | None = None,
    scale_by_t2: bool = False,
    kd_mask: torch.Tensor | None = None,
    pairwise_grid: int = losses.PAIRWISE_GRID,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The combined objective of ``method``: L = α·L_ce + β·Σ L_term over its terms (no KD:
    L_ce alone); α, β and T left None take the method's defaults.

    ``student_out`` and ``teacher_out`` are the models' dicts (``"out"``: logits at input size,
    ``"features"``: the four levels, the teacher's projected; ``"raw_features"``: the teacher's
    own; ``"adapted"``: the student's through the method's adapters). Void pixels are left out
    of the cross entropy; the distillation terms see the pixels of ``kd_mask`` (default: the
    non-void ones; on unlabeled images, whose targets are all void, the trainer passes every
    pixel). Returns the total and every component (detached)."""
    m = get(method)
    d = m.defaults
    bound = Objective(
        m,
        d["alpha"] if alpha is None else alpha,
        d["beta"] if beta is None else beta,
        d["temperature"] if temperature is None else temperature,
        scale_by_t2,
        pairwise_grid,
    )
    return bound(student_out, teacher_out, target, kd_mask)


# --------------------------------------------------------------------------- the declarations
# Each term looks its loss up in kdlib.losses when it runs (not when it is declared), so that a
# test can watch what the trainer hands each loss.

TABLE1 = {"alpha": 0.7, "beta": 0.3, "temperature": 4.0}


def computes(loss: str):
    """Names the function of kdlib.losses a term computes (by name, for the reason above), so
    that the report can print the term's formula from that function's docstring."""

    def mark(term):
        term.loss = loss
        return term

    return mark


@computes("response_kd_loss")
def _response(s, t, y, seen, o):
    return losses.response_kd_loss(s["out"], t["out"], o.temperature, seen, o.scale_by_t2)


@computes("feature_kd_loss")
def _feature(s, t, y, seen, o):
    return losses.feature_kd_loss(s["features"], t["features"], seen)


@computes("pairwise_loss")
def _pairwise(s, t, y, seen, o):
    return losses.pairwise_loss(s["features"][-1], t["raw_features"][-1], o.pairwise_grid)


@computes("cwd_loss")
def _cwd(s, t, y, seen, o):
    return losses.cwd_loss(s["out"], t["out"], o.temperature, seen)


@computes("dist_loss")
def _dist(s, t, y, seen, o):
    return losses.dist_loss(s["out"], t["out"], o.temperature, seen)


@computes("response_ls_loss")
def _response_ls(s, t, y, seen, o):
    return losses.response_ls_loss(s["out"], t["out"], o.temperature, seen)


@computes("attention_transfer_loss")
def _at(s, t, y, seen, o):
    return losses.attention_transfer_loss(s["features"], t["raw_features"])


@computes("feature_kd_loss")
def _feature_student(s, t, y, seen, o):
    return losses.feature_kd_loss(s["adapted"], t["raw_features"], seen)


@computes("cirkd_pixel_loss")
def _cirkd_pixel(s, t, y, seen, o):
    return losses.cirkd_pixel_loss(s["features"][-1], t["raw_features"][-1])


CIRKD_REGION_WEIGHT = 0.1  # train_cirkd.py's --lambda-memory-region, relative to its other terms' 1


@computes("cirkd_region_loss")
def _cirkd_region(s, t, y, seen, o):
    return CIRKD_REGION_WEIGHT * losses.cirkd_region_loss(s["adapted"][-1], t["raw_features"][-1], y, seen)


register(Method("none", "No KD", TABLE1, "only L_ce; recorded as Table 1's", group="report"))
register(
    Method(
        "feature",
        "Feature",
        TABLE1,
        "the report's Table 1",
        reads=("features",),
        terms={"feature": _feature},
        group="report",
    )
)
register(
    Method(
        "response",
        "Response",
        TABLE1,
        "the report's Table 1",
        reads=("logits",),
        terms={"response": _response},
        group="report",
    )
)
register(
    Method(
        "both",
        "Feature & Response",
        TABLE1,
        "the report's Table 1",
        reads=("logits", "features"),
        terms={"response": _response, "feature": _feature},
        group="report",
    )
)
register(
    Method(
        "pairwise",
        "Pair-wise similarity (SKD)",
        {"alpha": 1.0, "beta": 0.5, "temperature": 1.0},  # T unused
        "SKD's released training script: lambda_pa 0.5 on a 2×2 node grid, the cross entropy at 1",
        reads=("raw_features",),
        terms={"pairwise": _pairwise},
    )
)
register(
    Method(
        "cwd",
        "Channel-wise (CWD)",
        {"alpha": 1.0, "beta": 3.0, "temperature": 4.0},
        "the CWD paper, semantic segmentation on logits: loss weight 3, tau 4",
        reads=("logits",),
        terms={"cwd": _cwd},
    )
)
register(
    Method(
        "dist",
        "DIST",
        {"alpha": 1.0, "beta": 1.0, "temperature": 1.0},
        "DIST's paper and segmentation code: both relations weighted 1, tau 1, loss weight 1",
        reads=("logits",),
        terms={"dist": _dist},
    )
)
register(
    Method(
        "response_ls",
        "Response, standardised logits (LS)",
        {"alpha": 0.1, "beta": 9.0, "temperature": 2.0},
        "the logit-standardisation paper's code: KD with --logit-stand --base-temp 2 --kd-weight 9, CE weight 0.1",
        reads=("logits",),
        terms={"response_ls": _response_ls},
    )
)
register(
    Method(
        "at",
        "Attention transfer (AT)",
        {"alpha": 1.0, "beta": 500.0, "temperature": 1.0},  # T unused
        "the AT paper and its code: beta/2 with beta = 1000 on the sum over levels, p = 2, CE weight 1",
        reads=("raw_features",),
        terms={"at": _at},
    )
)
register(
    Method(
        "feature_student",
        "Feature, adapters on the student",
        TABLE1,
        "the report's Table 1, as its feature KD: only the 1×1 adapters move to the student's side",
        reads=("raw_features",),
        terms={"feature_student": _feature_student},
        adapters=level_adapters,
    )
)
# CIRKD (Yang et al., CVPR 2022) as its released train_cirkd.py runs it by default: CE + 1·logit KD
# (CriterionKD: KL at T 1 over every pixel of the logits at their own stride; here
# response_kd_loss, the same gradient, on the non-void pixels at input size) + 1·the mini-batch
# pixel-to-pixel term (the student's raw last level) + 0.1·the memory-based pixel-to-pixel and
# 0.1·pixel-to-region terms (the student's last level through its projection head,
# conv1x1-BN-ReLU-conv1x1). No memory bank here: the region term contrasts with the batch's own
# regions and the memory's pixel-to-pixel term is left out. train_cirkd.py's defaults are kept;
# its VOC script (train_scripts/train_cirkd/voc) lowers the two memory terms to 0.01.
register(
    Method(
        "cirkd",
        "Cross-image relations (CIRKD)",
        {"alpha": 1.0, "beta": 1.0, "temperature": 1.0},
        "CIRKD's released train_cirkd.py defaults, mini-batch variant: CE 1, logit KD 1 at T 1, "
        "mini-batch pixel-to-pixel 1, pixel-to-region 0.1 (--lambda-memory-region, folded into the term) "
        "over the batch's regions instead of the memory bank's, similarity temperature 0.1; "
        "its memory-based pixel-to-pixel term (0.1) left out",
        reads=("logits", "raw_features"),
        terms={"response": _response, "cirkd_pixel": _cirkd_pixel, "cirkd_region": _cirkd_region},
        adapters=cirkd_projector,
        constants={"similarity_temperature": losses.CIRKD_TAU, "region_weight": CIRKD_REGION_WEIGHT},
    )
)
register_variant(Variant("response_cached", "response", "Response, cached teacher (offline)", cached=True, extra=False))
register_variant(Variant("response_t2", "response", "Response ×T² (Hinton's form)", {"scale_by_t2": True}))
# The other readings of two papers' settings (docs/regime.md): LS with the cross entropy at 1, as one
# stored copy of its authors' configuration has it, and AT's β = 1000 without Eq. 2's /2.
register_variant(Variant("response_ls_ce1", "response_ls", "LS, cross entropy at 1", {"alpha": 1.0}))
register_variant(Variant("at_beta1000", "at", "AT, β = 1000", {"beta": 1000.0}))
