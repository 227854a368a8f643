"""The distillation objectives, one pure function per loss term: tensors in, scalar out.

The report's terms (Section 2: cross entropy, response KD, feature KD) and later ones
from the KD literature: pair-wise similarity (Liu et al., 2019), channel-wise distillation
(Shu et al., 2021), DIST (Huang et al., 2022), logit standardisation (Sun et al., 2024),
attention transfer (Zagoruyko & Komodakis, 2017) and cross-image relations (CIRKD: Yang et al.,
2022). Which terms a method sums, with which weights, is declared in :mod:`kdlib.methods`.
Every term but pair-wise similarity, attention transfer and CIRKD's pixel-to-pixel term
(whole-image maps) leaves out pixels outside its mask (by default those labelled ``VOID``, 255;
on unlabeled images the distillation terms see every pixel). When a batch holds no valid pixel
at all, each term is 0 (with a zero gradient) rather than NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .conventions import NUM_CLASSES, VOID

PAIRWISE_GRID = 2  # nodes per side of the pair-wise affinity (SKD: patches of half the map)


def _masked_mean(per_pixel: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``per_pixel`` (N×H×W) over ``valid`` pixels; 0 when there are none."""
    if valid is None:
        return per_pixel.mean()
    valid = valid.to(per_pixel.dtype)
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1.0)


def supervised_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel-wise cross entropy with the ground truth, void pixels left out.

        L_ce = -1/|V| · Σ_{p∈V} log softmax(z_s(p))_{y(p)},   V = {p : y(p) ≠ 255}

    ``logits``: N×C×H×W student logits (never temperature-divided); ``target``: N×H×W int64.
    """
    per_pixel = F.cross_entropy(logits, target, ignore_index=VOID, reduction="none")
    return _masked_mean(per_pixel, target != VOID)


def response_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 4.0,
    valid_mask: torch.Tensor | None = None,
    scale_by_t2: bool = False,
) -> torch.Tensor:
    """Soft-target cross entropy between temperature-softened teacher and student outputs.

        L_response = 1/|V| · Σ_{p∈V} -Σ_c softmax(z_t(p)/T)_c · log softmax(z_s(p)/T)_c
        L_response×T² = T² · L_response          (scale_by_t2=True: Hinton's form)

    averaged over the valid pixels V (all pixels when ``valid_mask`` is None). This is the
    report's formula, which has no T² factor, so ``scale_by_t2=False`` is the default.
    ``scale_by_t2=True`` multiplies the loss by T² (Hinton et al.): the gradient of the soft
    term shrinks like 1/T², and the factor keeps its size comparable to the cross entropy's
    when T changes; at T=4 it makes the distillation term 16× stronger relative to α·CE.

    Note that this cross entropy equals KL(p_t‖p_s) plus the teacher's entropy, which does
    not depend on the student: the gradients are those of the KL divergence, the value is not
    (its minimum is the teacher's entropy, not 0).
    """
    _check_logits("response_kd_loss", student_logits, teacher_logits, temperature)
    t = float(temperature)
    if valid_mask is None:
        weights = student_logits.new_full((student_logits.shape[0], *student_logits.shape[2:]), 1.0)
    else:
        weights = valid_mask.to(torch.float32)
    weights = weights / weights.sum().clamp_min(1.0)  # 1/|V| on valid pixels, 0 elsewhere
    loss = _SoftTargetCrossEntropy.apply(student_logits.float(), teacher_logits.detach().float(), t, weights)
    return loss * (t * t) if scale_by_t2 else loss


def _check_logits(loss: str, student_logits, teacher_logits, temperature: float) -> None:
    """The logit terms' shared argument checks; the message names the loss."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"{loss}: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ; resize the teacher's logits to the student's first"
        )
    if temperature <= 0:
        raise ValueError(f"{loss}: temperature must be > 0, got {temperature}")


class _SoftTargetCrossEntropy(torch.autograd.Function):
    """Σ_p w(p) · -Σ_c softmax(z_t(p)/T)_c · log softmax(z_s(p)/T)_c, with its gradient in
    closed form, ∂/∂z_s = w · (softmax(z_s/T) - softmax(z_t/T)) / T, computed in the forward
    pass (the teacher gets no gradient).

    With p_t = softmax(z_t/T), m = max_c z_s/T and S = Σ_c exp(z_s/T - m), the per-pixel term
    is m + log S - Σ_c p_t,c · z_s,c/T (since Σ_c p_t,c = 1): one exponential per logit
    and per model, logarithms only per pixel. The batch is processed a few images at a time,
    so each chunk's passes stay in the CPU's cache. Against autograd through log_softmax: the
    same value and gradient (tested), 1.8× faster on a 224 px batch of 16 on a CPU.
    """

    CHUNK = 1 << 20  # logits per chunk (one 224 px image of 21 classes)

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, temperature, weights):
        n, c = student_logits.shape[:2]
        zs = student_logits.reshape(n, c, -1)
        zt = teacher_logits.reshape(n, c, -1)
        w = weights.reshape(n, -1)
        need_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(zs) if need_grad else None
        total = zs.new_zeros(())
        step = max(1, _SoftTargetCrossEntropy.CHUNK // zs[0].numel())
        for i in range(0, n, step):
            p_t = _softmax_(zt[i : i + step] / temperature)
            p_s = torch.div(zs[i : i + step], temperature, out=grad[i : i + step] if need_grad else None)
            cross = (p_t * p_s).sum(1)  # Σ_c p_t · z_s/T, before p_s becomes the softmax
            log_norm = _softmax_(p_s, with_log_norm=True)  # m + log S per pixel; p_s now softmax(z_s/T)
            total += ((log_norm - cross) * w[i : i + step]).sum()
            if need_grad:
                p_s.sub_(p_t).mul_(w[i : i + step, None] / temperature)
        ctx.save_for_backward(grad)
        ctx.shape = student_logits.shape
        return total

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return (grad * grad_output).view(ctx.shape), None, None, None


def _softmax_(z: torch.Tensor, with_log_norm: bool = False):
    """Softmax over dim 1 of a N×C×P tensor, in place (z may be a fresh temporary). With
    ``with_log_norm`` it returns max + log Σ exp(z - max) per pixel (N×P) instead of z."""
    peak = z.amax(1, keepdim=True)
    z.sub_(peak).exp_()
    total = z.sum(1, keepdim=True)
    z.div_(total)
    return (peak + total.log()).squeeze(1) if with_log_norm else z


def _valid_at(valid_mask: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | None:
    """A feature pixel counts as valid when most of the input pixels it covers are valid."""
    if valid_mask is None:
        return None
    if tuple(valid_mask.shape[-2:]) == tuple(size):
        return valid_mask
    frac = F.interpolate(valid_mask[:, None].float(), size=size, mode="area")[:, 0]
    return frac > 0.5


def _check_levels(loss: str, student_features, teacher_features) -> None:
    """The feature terms' shared check: as many teacher levels as student ones, at least one."""
    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError(
            f"{loss}: got {len(student_features)} student and {len(teacher_features)} "
            "teacher feature levels; they must match and be non-empty"
        )


def feature_cosine_maps(
    student_features: list[torch.Tensor] | tuple[torch.Tensor, ...],
    teacher_features: list[torch.Tensor] | tuple[torch.Tensor, ...],
) -> list[torch.Tensor]:
    """cos(f_t^i(p), f_s^i(p)) at every position p of every level i: one N×H_i×W_i map per
    level, the cosine taken across channels. A teacher map of another spatial size is resized
    bilinearly to the student's; both must already have the same channel count (the teacher
    wrapper's 1×1 projections, or a method's adapters on the student's side, do that)."""
    _check_levels("feature_kd_loss", student_features, teacher_features)
    maps = []
    for level, (fs, ft) in enumerate(zip(student_features, teacher_features)):
        if fs.shape[1] != ft.shape[1]:
            raise ValueError(
                f"feature_kd_loss: level {level} has {fs.shape[1]} student and {ft.shape[1]} "
                "teacher channels; project one side's features to the other's width first"
            )
        if ft.shape[-2:] != fs.shape[-2:]:
            ft = F.interpolate(ft, size=fs.shape[-2:], mode="bilinear", align_corners=False)
        maps.append(F.cosine_similarity(fs.float(), ft.float(), dim=1, eps=1e-8))
    return maps


def feature_kd_loss(
    student_features: list[torch.Tensor] | tuple[torch.Tensor, ...],
    teacher_features: list[torch.Tensor] | tuple[torch.Tensor, ...],
    valid_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cosine feature alignment over the N levels (the report uses four).

        L_feature = 1/N · Σ_i mean_p (1 - cos(f_t^i(p), f_s^i(p)))

    with the cosines of :func:`feature_cosine_maps`. With ``valid_mask`` (N×H×W, at input
    resolution) a feature position counts only when most of the input pixels it covers are
    valid.
    """
    maps = feature_cosine_maps(student_features, teacher_features)
    terms = [_masked_mean(1.0 - cos, _valid_at(valid_mask, tuple(cos.shape[-2:]))) for cos in maps]
    return torch.stack(terms).mean()


def _pool_to(f: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return f if tuple(f.shape[-2:]) == size else F.adaptive_max_pool2d(f, size)


def affinity(feature: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between every pair of positions of an N×C×H×W map: N×HW×HW."""
    f = F.normalize(feature.float().flatten(2), dim=1, eps=1e-8)
    return f.transpose(1, 2) @ f


def pairwise_loss(
    student_feature: torch.Tensor, teacher_feature: torch.Tensor, grid: int = PAIRWISE_GRID
) -> torch.Tensor:
    """Pair-wise similarity distillation (Liu et al., "Structured Knowledge Distillation for
    Semantic Segmentation", CVPR 2019, Eq. 2):

        L_pa = 1/(N·P²) · Σ_n Σ_{i,j} (a^s_ij - a^t_ij)²,   a_ij = f_iᵀf_j / (‖f_i‖·‖f_j‖)

    over the P nodes of each map: both maps are max-pooled to the same grid of at most
    ``grid``×``grid`` nodes (SKD pools patches of half the map: 2×2 nodes), so the cost does
    not grow with the image and the two networks' strides need not match. The affinity does
    not depend on the channel count, so no projection is needed. Void pixels are not masked:
    a node summarises a whole region.
    """
    if student_feature.dim() != 4 or teacher_feature.dim() != 4:
        raise ValueError("pairwise_loss: expects N×C×H×W student and teacher feature maps")
    if grid < 1:
        raise ValueError(f"pairwise_loss: grid must be >= 1, got {grid}")
    size = tuple(min(grid, s, t) for s, t in zip(student_feature.shape[-2:], teacher_feature.shape[-2:]))
    a_s = affinity(_pool_to(student_feature, size))
    a_t = affinity(_pool_to(teacher_feature.detach(), size))
    return (a_s - a_t).pow(2).mean()


# Stands in for the logits of pixels outside the mask: exp() of it is exactly 0 in float32,
# while it stays finite, so 0·log-ratio terms are 0 instead of NaN.
_MASKED_LOGIT = -1e9


def cwd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 4.0,
    valid_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Channel-wise distillation (Shu et al., "Channel-wise Knowledge Distillation for Dense
    Prediction", ICCV 2021, Eq. 3-4): each channel c of the logits becomes a distribution
    over the positions p of its image,

        φ(z)_c,p = exp(z_c,p / T) / Σ_p' exp(z_c,p' / T),
        L_cwd = T²/(N·C) · Σ_n Σ_c Σ_p φ(z_t)_c,p · log(φ(z_t)_c,p / φ(z_s)_c,p)

    (KL from teacher to student, summed over positions, averaged over images and channels).
    With ``valid_mask`` the distributions range over an image's valid positions only; an
    image without any contributes 0.
    """
    _check_logits("cwd_loss", student_logits, teacher_logits, temperature)
    n, c = student_logits.shape[:2]
    zs = student_logits.float().reshape(n, c, -1) / temperature
    zt = teacher_logits.detach().float().reshape(n, c, -1) / temperature
    if valid_mask is not None:
        outside = ~valid_mask.reshape(n, 1, -1)
        zs, zt = zs.masked_fill(outside, _MASKED_LOGIT), zt.masked_fill(outside, _MASKED_LOGIT)
    log_ps, log_pt = F.log_softmax(zs, dim=-1), F.log_softmax(zt, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)  # N×C
    return kl.mean() * temperature**2


def _pearson(a: torch.Tensor, b: torch.Tensor, dim: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Pearson correlation of ``a`` and ``b`` along ``dim``, with optional non-negative
    ``weights`` (broadcast along ``dim``) for the means and sums: cosine of the centred vectors."""
    if weights is None:
        weights = torch.ones_like(a)
    total = weights.sum(dim, keepdim=True).clamp_min(1e-12)
    a = a - (weights * a).sum(dim, keepdim=True) / total
    b = b - (weights * b).sum(dim, keepdim=True) / total
    num = (weights * a * b).sum(dim)
    # at least 1e-8 (a constant vector correlates 0), and no infinite sqrt' at 0
    den = ((weights * a * a).sum(dim) * (weights * b * b).sum(dim)).clamp_min(1e-16).sqrt()
    return num / den


def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    valid_mask: torch.Tensor | None = None,
    inter_weight: float = 1.0,
    intra_weight: float = 1.0,
) -> torch.Tensor:
    """DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022,
    Eq. 5-8), with each pixel an instance as in the paper's segmentation experiments:
    Y = softmax(z/T) over classes, one row per pixel of the batch (B pixels × C classes),

        L_inter = 1 - 1/B · Σ_i ρ(Y_s[i,:], Y_t[i,:])     (a pixel's ranking of the classes)
        L_intra = 1 - 1/C · Σ_j ρ(Y_s[:,j], Y_t[:,j])     (a class's scores across the pixels)
        L_DIST  = T² · (w_inter·L_inter + w_intra·L_intra)  w_inter = ``inter_weight``, w_intra = ``intra_weight``
                                                            (the paper's β and γ; not the objective's β)

    with ρ the Pearson correlation, which ignores a shift and a scale of the student's
    predictions: only their relations must match, not their values (KL's exact match).
    With ``valid_mask`` the pixels outside it take no part in either term.
    """
    _check_logits("dist_loss", student_logits, teacher_logits, temperature)
    c = student_logits.shape[1]
    ys = F.softmax(student_logits.float() / temperature, dim=1).transpose(0, 1).reshape(c, -1)  # C×B
    yt = F.softmax(teacher_logits.detach().float() / temperature, dim=1).transpose(0, 1).reshape(c, -1)
    w = None if valid_mask is None else valid_mask.reshape(1, -1).to(ys.dtype)
    per_pixel = _pearson(ys, yt, dim=0)  # B
    inter = 1.0 - _masked_mean(per_pixel, None if w is None else w[0] > 0)
    intra = 1.0 - _pearson(ys, yt, dim=1, weights=w).mean()
    loss = (inter_weight * inter + intra_weight * intra) * temperature**2
    return loss if w is None else loss * (w.sum() > 0).to(loss.dtype)  # 0 without any valid pixel


def standardise(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Z-score of the logits along the class dimension (logit standardisation, Sun et al.):
    (z - mean_c z) / (std_c z + 1e-7), the unbiased std as in the paper's code."""
    z = logits.float()
    return (z - z.mean(dim, keepdim=True)) / (z.std(dim, keepdim=True) + 1e-7)


def response_ls_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 2.0,
    valid_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Response KD with logit standardisation (Sun et al., "Logit Standardization in Knowledge
    Distillation", CVPR 2024, Eq. 8 and Algorithm 1), each pixel an instance:

        z~(p) = (z(p) - mean_c z(p)) / std_c z(p)                 for the student and the teacher
        L_response_ls = T² · 1/|V| · Σ_{p∈V} KL(softmax(z~_t(p)/T) ‖ softmax(z~_s(p)/T))

    The z-score takes each model's own logit range and spread out of the match, so the student
    must copy the teacher's relations between classes, not the size of its logits (the
    paper's argument against a temperature shared by a small student and a large teacher).
    KL rather than the report's cross entropy: the gradients are the same, the floor is 0.
    """
    _check_logits("response_ls_loss", student_logits, teacher_logits, temperature)
    log_s = F.log_softmax(standardise(student_logits) / temperature, dim=1)
    log_t = F.log_softmax(standardise(teacher_logits.detach()) / temperature, dim=1)
    per_pixel = (log_t.exp() * (log_t - log_s)).sum(1)
    return _masked_mean(per_pixel, valid_mask) * temperature**2


def attention_map(feature: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A feature map's spatial attention (Zagoruyko & Komodakis): mean_c f_c(p)², resized
    bilinearly to ``size`` when given, flattened and L2-normalised per image: N×(H·W)."""
    q = feature.float().pow(2).mean(1, keepdim=True)
    if size is not None and tuple(q.shape[-2:]) != tuple(size):
        q = F.interpolate(q, size=size, mode="bilinear", align_corners=False)
    return F.normalize(q.flatten(1), dim=1, eps=1e-12)


def attention_transfer_loss(
    student_features: list[torch.Tensor] | tuple[torch.Tensor, ...],
    teacher_features: list[torch.Tensor] | tuple[torch.Tensor, ...],
) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention",
    ICLR 2017, Eq. 2 with p = 2, as in the paper's code), over the N feature levels:

        a(f) = vec(mean_c f_c²) / ‖vec(mean_c f_c²)‖₂
        L_at = Σ_i mean_{n,j} (a(f_s^i)_j - a(f_t^i)_j)²

    The maps sum the channels, so the student and the teacher need not have the same widths;
    a teacher map of another size is resized bilinearly to the student's. Each map is
    normalised over its whole image, so void pixels stay in (leaving positions out would change
    every map's norm); the paper's β = 1000 multiplies β/2 · L_at.
    """
    _check_levels("attention_transfer_loss", student_features, teacher_features)
    terms = [
        (attention_map(fs) - attention_map(ft.detach(), tuple(fs.shape[-2:]))).pow(2).mean()
        for fs, ft in zip(student_features, teacher_features)
    ]
    return torch.stack(terms).sum()


CIRKD_TAU = 0.1  # CIRKD's similarity temperature (train_cirkd.py's --contrast-temperature)


def _resized_like(teacher_feature: torch.Tensor, student_feature: torch.Tensor) -> torch.Tensor:
    """The teacher's map (detached, float32), resized bilinearly to the student's size."""
    ft = teacher_feature.detach().float()
    if ft.shape[-2:] != student_feature.shape[-2:]:
        ft = F.interpolate(ft, size=student_feature.shape[-2:], mode="bilinear", align_corners=False)
    return ft


def cirkd_pixel_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor, tau: float = CIRKD_TAU):
    """CIRKD's mini-batch pixel-to-pixel distillation (Yang et al., "Cross-Image Relational
    Knowledge Distillation for Semantic Segmentation", CVPR 2022; the released
    ``CriterionMiniBatchCrossImagePair``): for every ordered pair (i, j) of the batch's B images,
    i = j included, each pixel a of image i against every pixel b of image j,

        S_ij(a, b) = f̂_i(a)ᵀ f̂_j(b),   f̂ = f / ‖f‖ per pixel (across channels), for each network
        L_cirkd_pixel = 1/(B²·P) · Σ_i Σ_j Σ_a KL(softmax_b(S^t_ij(a, ·)/τ) ‖ softmax_b(S^s_ij(a, ·)/τ))

    over the P positions of a map (the teacher's resized bilinearly to the student's size), τ =
    ``tau`` (0.1), no τ² factor. Each network's similarities stay in its own feature space, so
    the widths need not match: the student's raw feature, as in CIRKD's code. Whole-image maps:
    void pixels are not masked.
    """
    if student_feature.dim() != 4 or teacher_feature.dim() != 4:
        raise ValueError("cirkd_pixel_loss: expects N×C×H×W student and teacher feature maps")
    fs = F.normalize(student_feature.float().flatten(2), dim=1, eps=1e-8)  # B×C×P
    ft = F.normalize(_resized_like(teacher_feature, student_feature).flatten(2), dim=1, eps=1e-8)
    log_ps = F.log_softmax(torch.einsum("icp,jcq->ijpq", fs, fs) / tau, dim=-1)  # B×B×P×P
    log_pt = F.log_softmax(torch.einsum("icp,jcq->ijpq", ft, ft) / tau, dim=-1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()


def cirkd_region_loss(
    student_feature: torch.Tensor,
    teacher_feature: torch.Tensor,
    labels: torch.Tensor,
    valid_mask: torch.Tensor | None = None,
    tau: float = CIRKD_TAU,
    num_classes: int = NUM_CLASSES,
) -> torch.Tensor:
    """CIRKD's pixel-to-region distillation (ibid., the region term of the released
    ``StudentSegContrast``) in its mini-batch variant: the regions are the batch's own, not a
    memory bank's. A region R_k is the pixels of one class in one image (``labels`` resized to the
    feature's size by nearest neighbour, void left out); its embedding is the normalised mean of
    the teacher's normalised embeddings over it,

        r_k = normalize(1/|R_k| · Σ_{a∈R_k} f̂_t(a)),   f̂ = f / ‖f‖ per pixel
        L_cirkd_region = 1/|A| · Σ_{a∈A} KL(softmax_k(f̂_t(a)ᵀ r_k / τ) ‖ softmax_k(f̂_s(a)ᵀ r_k / τ))

    over the anchor pixels A (those of ``valid_mask`` at the feature's size, by nearest
    neighbour; by default the non-void ones) and the regions of the whole batch. The student's
    map must already have the teacher's width (CIRKD's projection head, a method's adapters);
    the teacher's is resized bilinearly to the student's size. τ = ``tau`` (0.1), no τ² factor;
    0 without an anchor or a region.
    """
    if student_feature.shape[1] != teacher_feature.shape[1]:
        raise ValueError(
            f"cirkd_region_loss: {student_feature.shape[1]} student and {teacher_feature.shape[1]} teacher "
            "channels; project the student's feature to the teacher's width first"
        )
    n, c, h, w = student_feature.shape
    fs = F.normalize(student_feature.float(), dim=1, eps=1e-8).flatten(2).transpose(1, 2)  # N×P×C
    ft = F.normalize(_resized_like(teacher_feature, student_feature), dim=1, eps=1e-8).flatten(2).transpose(1, 2)
    y = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest").flatten(1).long()  # N×P
    anchors = y != VOID if valid_mask is None else _nearest(valid_mask, (h, w)).flatten(1)
    members = F.one_hot(y.masked_fill(y == VOID, num_classes), num_classes + 1)[..., :num_classes].float()
    regions = F.normalize(members.transpose(1, 2) @ ft, dim=-1, eps=1e-8).reshape(n * num_classes, c)
    absent = members.sum(1).reshape(1, -1) == 0  # the slots of classes an image does not hold
    logits_s = (fs.reshape(-1, c) @ regions.T / tau).masked_fill(absent, _MASKED_LOGIT)
    logits_t = (ft.reshape(-1, c) @ regions.T / tau).masked_fill(absent, _MASKED_LOGIT)
    log_ps, log_pt = F.log_softmax(logits_s, dim=1), F.log_softmax(logits_t, dim=1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(1)  # one per pixel of the batch
    return _masked_mean(kl, anchors.reshape(-1))


def _nearest(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A boolean N×H×W mask resized by nearest neighbour (as CIRKD resizes its labels)."""
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5


def formula(loss) -> str:
    """The formula a loss's docstring states: its first block of lines indented beyond the
    text, dedented (what the report's Section 2 prints beside each method)."""
    import inspect

    lines, block = (inspect.getdoc(loss) or "").splitlines(), []
    for line in lines:
        if line.startswith("    "):
            block.append(line[4:])
        elif block:
            break
    return "\n".join(block)
