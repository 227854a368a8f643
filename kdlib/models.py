"""The report's student (Section 1) and the frozen teacher behind a feature-exposing wrapper.

Both return the same dict, so the losses and the trainer never care which is which:
``{"out": logits N×C×H×W at the input size, "features": [four maps, shallow to deep]}``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .conventions import upsample_logits

STUDENT_CHANNELS = (32, 64, 128, 256)


# --------------------------------------------------------------------------- student


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    )


class ResidualBlock(nn.Module):
    """ResNet's basic block (report Fig. 2): 3×3 conv-BN-ReLU, 3×3 conv-BN, + shortcut, ReLU.

    The shortcut is the identity, or a 1×1 conv + BN where the stride or width changes.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3)
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv1(x), inplace=True)
        return F.relu(self.conv2(y) + self.shortcut(x), inplace=True)


class UpFuse(nn.Module):
    """One decoder step: ConvTranspose2d(4, stride 2, pad 1) doubles the size, BN + ReLU,
    then fusion with the matching encoder level by element-wise addition (the skip goes
    through a 1×1 conv + BN first when its width differs), then a 3×3 conv-BN-ReLU that
    mixes the sum."""

    def __init__(self, cin: int, cout: int, skip_channels: int):
        super().__init__()
        self.up = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )
        self.skip = conv_bn(skip_channels, cout, 1) if skip_channels != cout else nn.Identity()
        self.fuse = nn.Sequential(conv_bn(cout, cout, 3), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.up(x) + self.skip(skip))


class CustomSegmentationModel(nn.Module):
    """The report's compact encoder-decoder student (Section 1, Figs. 1-2).

    - stem: 3×3 conv (32 filters, stride 2, pad 1), BN, ReLU, 3×3 max pool (stride 2): /4;
    - encoder: four residual stages of 32, 64, 128, 256 channels, strides 1, 2, 2, 2
      (/4, /8, /16, /32), each of ``blocks_per_stage`` basic blocks;
    - decoder: four ConvTranspose2d(4, 2, 1) 256→128→64→32→16, each fused by addition with
      the matching encoder level (stage 3, 2, 1, then the stem's 32-channel /2 map through a
      1×1 projection to 16 channels);
    - a 1×1 classifier 16→``num_classes`` at /2, resized bilinearly to the input size.

    Parameter count (num_classes=21): 3,689,061, the report's "3.7m" (-0.3%). It comes from
    two basic blocks per stage (ResNet-18's layout at a quarter of its width: 2,795,040 in
    stem and encoder) and a decoder of 893,664 whose every step is ConvTranspose-BN-ReLU,
    addition, then a 3×3 conv-BN-ReLU that mixes the sum (transposed convs 696,320 plus their
    BN; mixing convs 196,320; the stem skip's 1×1 projection 544), plus the 357-parameter
    classifier. With one block per stage the model would have 2.12M, and without the mixing
    convs 3.49M (-5.6%); neither matches the report.

    ``forward(x)`` needs sides divisible by 32 and returns ``{"out": N×C×H×W logits,
    "features": [stage1, stage2, stage3, stage4]}`` (32@/4, 64@/8, 128@/16, 256@/32).
    """

    def __init__(self, num_classes: int = 21, blocks_per_stage: int = 2):
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Sequential(conv_bn(3, 32, 3, stride=2), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, cin = [], 32
        for cout, stride in zip(STUDENT_CHANNELS, (1, 2, 2, 2)):
            blocks = [ResidualBlock(cin, cout, stride)]
            blocks += [ResidualBlock(cout, cout) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.decoder = nn.ModuleList(
            [UpFuse(256, 128, 128), UpFuse(128, 64, 64), UpFuse(64, 32, 32), UpFuse(32, 16, 32)]
        )
        self.classifier = nn.Conv2d(16, num_classes, 1)
        self.feature_channels = STUDENT_CHANNELS

    def forward(self, x: torch.Tensor) -> dict:
        size = x.shape[-2:]
        if size[0] % 32 or size[1] % 32:
            raise ValueError(
                f"CustomSegmentationModel: input sides {tuple(size)} must divide by 32 "
                "(set image_size to a multiple of 32, e.g. 224)"
            )
        stem = self.stem(x)
        y, features = self.pool(stem), []
        for stage in self.stages:
            y = stage(y)
            features.append(y)
        skips = [features[2], features[1], features[0], stem]
        for up, skip in zip(self.decoder, skips):
            y = up(y, skip)
        # contiguous (NCHW) before upsampling: the full-size logits then sit channel-planar,
        # the layout in which the per-pixel losses over 21 classes run fastest on a CPU
        logits = F.interpolate(self.classifier(y).contiguous(), size=size, mode="bilinear", align_corners=False)
        return {"out": logits, "features": features}


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------- teacher


class TeacherWrapper(nn.Module):
    """A frozen torchvision segmentation model that also returns projected features.

    ``model`` is any torchvision segmentation model whose ``backbone`` is an ordered module
    dict (``IntermediateLayerGetter``: FCN, DeepLabV3) and whose ``classifier`` maps the last
    backbone output to logits. ``feature_layers`` names the four backbone children whose
    outputs are distilled (``layer1``..``layer4`` for ResNets). Each goes through a trainable
    1×1 conv to the student's width (``student_channels``).

    Frozen for real: the wrapped model has ``requires_grad=False`` everywhere, stays in eval
    mode whatever ``.train()`` says (so batch-norm statistics never move) and runs under
    ``torch.inference_mode``. Only ``self.projections`` train; hand exactly
    ``wrapper.projections.parameters()`` to the optimizer.
    """

    def __init__(
        self,
        model: nn.Module,
        feature_layers: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4"),
        student_channels: tuple[int, ...] = STUDENT_CHANNELS,
    ):
        super().__init__()
        backbone = getattr(model, "backbone", None)
        if not isinstance(backbone, nn.ModuleDict) or not hasattr(model, "classifier"):
            raise TypeError(
                "TeacherWrapper needs a torchvision segmentation model with a `backbone` "
                f"(IntermediateLayerGetter) and a `classifier`; got {type(model).__name__}"
            )
        missing = [name for name in feature_layers if name not in backbone]
        if missing:
            raise ValueError(f"TeacherWrapper: backbone has no layer(s) {missing}; it has {list(backbone.keys())}")
        if len(feature_layers) != len(student_channels):
            raise ValueError("TeacherWrapper: one student width per feature layer is needed")
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.feature_layers = tuple(feature_layers)
        self.teacher_channels = self._probe_channels()
        self.projections = nn.ModuleList(
            nn.Conv2d(ct, cs, 1) for ct, cs in zip(self.teacher_channels, student_channels)
        )

    @torch.inference_mode()
    def _probe_channels(self) -> tuple[int, ...]:
        x = torch.zeros(1, 3, 64, 64, device=next(self.model.parameters()).device)
        return tuple(f.shape[1] for f in self._backbone(x)[1])

    def train(self, mode: bool = True) -> TeacherWrapper:
        """Only the projections follow ``mode``; the teacher itself always stays in eval."""
        self.training = mode
        self.projections.train(mode)
        self.model.eval()
        return self

    def _backbone(self, x: torch.Tensor) -> tuple[dict, list[torch.Tensor]]:
        """Run the backbone once: (its usual output dict, the distilled feature maps)."""
        features, returned = [], {}
        backbone = self.model.backbone
        for name, module in backbone.items():
            x = module(x)
            if name in self.feature_layers:
                features.append(x)
            if name in backbone.return_layers:
                returned[backbone.return_layers[name]] = x
        return returned, features

    def _head(self, returned: dict) -> torch.Tensor:
        """FCN and DeepLabV3 classify the ``out`` map; LR-ASPP takes the whole dict."""
        from torchvision.models.segmentation.lraspp import LRASPP

        if isinstance(self.model, LRASPP):
            return self.model.classifier(returned)
        return self.model.classifier(returned["out"])

    def teacher_forward(self, x: torch.Tensor, with_features: bool = True) -> dict:
        """The frozen teacher alone: logits at input size and the raw (unprojected) features.

        Runs under inference mode; the results are cloned into ordinary tensors so that the
        losses may save them for the student's backward pass.
        """
        with torch.inference_mode():
            returned, features = self._backbone(x)
            logits = upsample_logits(self._head(returned), x.shape[-2:])
        return {
            "out": logits.clone(),
            "features": [f.clone() for f in features] if with_features else [],
        }

    @torch.inference_mode()
    def native_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits at its own output stride (8 for FCN-ResNet50, 4 for the shapes
        LR-ASPP), before the upsampling to the input size: what the teacher-output cache stores."""
        return self._head(self._backbone(x)[0])

    def project(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [proj(f) for proj, f in zip(self.projections, features)]

    def forward(self, x: torch.Tensor, with_features: bool = True) -> dict:
        out = self.teacher_forward(x, with_features)
        out["features"] = self.project(out["features"]) if with_features else []
        return out


# The torchvision checkpoint of the report's teacher, and where we look for it.
FCN_RESNET50_FILE = "fcn_resnet50_coco-1167a1af.pth"
FCN_RESNET50_URL = "https://download.pytorch.org/models/" + FCN_RESNET50_FILE
TEACHER_WEIGHTS_ENV = "KDLIB_TEACHER_WEIGHTS"


def _hub_checkpoint() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / FCN_RESNET50_FILE


def fcn_resnet50_teacher(weights_path: str | os.PathLike | None = None) -> nn.Module:
    """torchvision's FCN-ResNet50 with ``FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1``.

    Looks for the checkpoint, in order: ``weights_path``; the file named by the environment
    variable ``KDLIB_TEACHER_WEIGHTS``; torch hub's cache (``<hub dir>/checkpoints/
    fcn_resnet50_coco-1167a1af.pth``, where torchvision saves it). Never downloads: on a
    machine where none of these exists it fails at once with a message saying where to get
    the file and where to put it. Returns the (unwrapped) model in eval mode.
    """
    from torchvision.models.segmentation import fcn_resnet50

    candidates = []
    if weights_path is not None:
        candidates.append(("argument weights_path", Path(weights_path)))
    if os.environ.get(TEACHER_WEIGHTS_ENV):
        candidates.append((f"${TEACHER_WEIGHTS_ENV}", Path(os.environ[TEACHER_WEIGHTS_ENV])))
    candidates.append(("torch hub cache", _hub_checkpoint()))
    found = next((path for _, path in candidates if path.is_file()), None)
    if found is None:
        tried = "\n".join(f"  - {where}: {path}" for where, path in candidates)
        raise FileNotFoundError(
            f"FCN-ResNet50 teacher weights not found ({FCN_RESNET50_FILE}). Looked in:\n{tried}\n"
            f"Download {FCN_RESNET50_URL} (torchvision's FCN_ResNet50_Weights."
            f"COCO_WITH_VOC_LABELS_V1) on a machine with network access and either put it at "
            f"{_hub_checkpoint()} or pass its path with --teacher-weights / ${TEACHER_WEIGHTS_ENV}."
        )
    model = fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    try:
        state = torch.load(found, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # a truncated file, another architecture, ...
        raise RuntimeError(f"{found} is not a usable FCN-ResNet50 (COCO_WITH_VOC_LABELS_V1) state dict: {exc}") from exc
    return model.eval()


def lraspp_resnet18(num_classes: int = 21) -> nn.Module:
    """The embedded benchmark's teacher: torchvision's LR-ASPP head on a ResNet-18 backbone.

    LR-ASPP (Searching for MobileNetV3, Howard et al. 2019) classifies a high-resolution
    "low" feature map and adds the stride-32 ``layer4`` context, gated by a global-pooling
    attention branch. Here "low" is ``layer1`` (stride 4), so the output stride is 4: a 16×16
    logit map for a 64 px image. On 64 px images the stride sets a ceiling
    (:func:`kdlib.failures.output_stride_ceiling`: ground-truth masks pooled to the stride and
    upsampled back score 0.757 mIoU on ``shapes`` val at stride 8, 0.944 at stride 4); a
    stride-8 tap of ``layer2`` trained to 0.705. The head is two 1×1 convolutions either way,
    so the cost is the same. 11.3M parameters, 3.07× the student; the four distilled levels
    are ``layer1``..``layer4`` (64, 128, 256, 512 channels).
    """
    from torchvision.models import resnet18
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.lraspp import LRASPP

    layers = {"layer1": "low", "layer2": "layer2", "layer3": "layer3", "layer4": "high"}
    backbone = IntermediateLayerGetter(resnet18(weights=None), layers)
    return LRASPP(backbone, low_channels=64, high_channels=512, num_classes=num_classes, inter_channels=128)


ARCHITECTURES = ("student", "lraspp_resnet18", "fcn_resnet50")


def build_model(name: str, num_classes: int = 21) -> nn.Module:
    """A fresh, randomly initialised model by name (weights are loaded elsewhere)."""
    if name == "student":
        return CustomSegmentationModel(num_classes)
    if name == "lraspp_resnet18":
        return lraspp_resnet18(num_classes)
    if name == "fcn_resnet50":
        from torchvision.models.segmentation import fcn_resnet50

        return fcn_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=True)
    raise ValueError(f"unknown model {name!r}; choose one of {ARCHITECTURES}")


def describe(model: nn.Module, image_size: int = 224) -> list[dict]:
    """The shape of every stage of a student (or a wrapped teacher) for one input of
    ``image_size``², with each stage's parameter count: Section 1 as a table."""
    rows, hooks = [], []
    named = (
        [("stem", model.stem), ("pool", model.pool)]
        + [(f"stage{i + 1}", s) for i, s in enumerate(model.stages)]
        + [(f"up{i + 1}", d) for i, d in enumerate(model.decoder)]
        + [("classifier", model.classifier)]
        if isinstance(model, CustomSegmentationModel)
        else [(name, module) for name, module in model.model.backbone.items()]
    )

    def hook(name, module):
        def record(_, __, output):
            rows.append({"stage": name, "output": tuple(output.shape[1:]), "parameters": count_parameters(module)})

        return record

    for name, module in named:
        hooks.append(module.register_forward_hook(hook(name, module)))
    try:
        with torch.no_grad():
            was_training = model.training
            model.eval()(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
            model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return rows
