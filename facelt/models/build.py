"""Build the network of a training stage from the typed config (explicit tables, no string imports)."""
from __future__ import annotations

import torch.nn as nn

from facelt.config import Config
from facelt.errors import ConfigError
from facelt.models.attention import ModulatedAttention
from facelt.models.backbone_table import backbone_entry, build_backbone, insightface_backbones
from facelt.models.head_table import build_head
from facelt.models.necks import ARCFACE_TORCH_BN_EPS, MXNET_BN_EPS, FaceNeck, FCAdd, PoolNeck
from facelt.models.net import Body, OLTRNet


def _backbone(cfg: Config) -> nn.Module:
    """``model.backbone`` from the backbone table (facelt/models/backbone_table.py)."""
    return build_backbone(cfg.model.backbone, in_channels=cfg.data.channels,
                          face_stem=cfg.model.face_stem)


def feature_map_size(backbone: nn.Module, channels: int, image_size: int) -> int:
    """Spatial size of the backbone's last map for an input of ``image_size`` (one dry run)."""
    import torch
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        out = backbone(torch.zeros(1, channels, image_size, image_size))
    backbone.train(was_training)
    if out.shape[-1] != out.shape[-2]:
        raise ConfigError(f"backbone map is not square: {tuple(out.shape)}")
    return int(out.shape[-1])


def face_neck_eps(cfg: Config) -> float:
    """The ``face`` neck's BatchNorm eps: ``model.neck_bn_eps``, or the convention of the weights
    it starts from (arcface_torch's 1e-5 with ``pretrained_format: insightface``, else MXNet's
    2e-5). A checkpoint's embedded config rebuilds the same eps."""
    if cfg.model.neck_bn_eps is not None:
        return cfg.model.neck_bn_eps
    return ARCFACE_TORCH_BN_EPS if cfg.model.pretrained_format == "insightface" else MXNET_BN_EPS


def build_body(cfg: Config, stage: int, image_size: int | None = None) -> Body:
    """The stage's body: backbone -> optional modulated attention -> neck -> optional fc_add."""
    st = cfg.stage(stage)
    backbone = _backbone(cfg)
    if st.experts > 1:
        if st.attention or cfg.model.neck != "pool":
            raise ConfigError(f"stage{stage}.experts = {st.experts}: a multi-expert body needs "
                              f"model.neck pool and stage{stage}.attention false")
        from facelt.models.expert_body import ExpertTrunk
        backbone = ExpertTrunk(backbone, st.experts)
    channels = backbone.out_channels
    size = None
    if (st.attention and st.spatial_attention == "reference") or cfg.model.neck != "pool":
        size = feature_map_size(backbone, cfg.data.channels, image_size or cfg.data.image_size)
    attention = None
    if st.attention:
        attention = ModulatedAttention(
            channels, map_size=size if st.spatial_attention == "reference" else None,
            init=st.attention_init)
    if cfg.model.neck == "pool":
        neck = PoolNeck(channels)
    else:
        neck = FaceNeck(channels, size, embedding_dim=cfg.model.embedding_dim,
                        dropout=cfg.model.dropout, bn_eps=face_neck_eps(cfg))
    width = cfg.stage1.fc_add if st.fc_add == -1 else st.fc_add
    if width < 0:
        raise ConfigError(f"stage{stage}.fc_add = -1 means 'as stage1.fc_add': not for stage 1")
    fc_add = FCAdd(neck.out_dim, width) if width else None
    return Body(backbone, neck, attention=attention, fc_add=fc_add)


def build_net(cfg: Config, stage: int, num_classes: int, image_size: int | None = None) -> OLTRNet:
    """The stage's network: :func:`build_body`, then the stage's head on the body's width."""
    body = build_body(cfg, stage, image_size)
    return OLTRNet(body, build_head(cfg.stage(stage), body.out_dim, num_classes,
                                    key=f"stage{stage}.head"))


def load_pretrained_weights(net: OLTRNet, cfg: Config) -> None:
    """Load ``model.pretrained`` into ``net``: ImageNet weights into the backbone, or (format
    ``insightface``) an arcface_torch ``backbone.pth`` into the IResNet trunk and, with the
    ``face`` neck, its embedding layer (``bn2``/``fc``/``features``) into the neck."""
    m = cfg.model
    if not m.pretrained:
        raise ConfigError("model.pretrained is empty: no weights file to load")
    if m.pretrained_format == "insightface":
        if not backbone_entry(m.backbone).insightface_weights:
            raise ConfigError(f"model.pretrained_format insightface needs a backbone that an "
                              f"arcface_torch backbone.pth loads into "
                              f"({', '.join(insightface_backbones())}), got model.backbone "
                              f"{m.backbone}")
        from facelt.models.iresnet import load_insightface_backbone
        load_insightface_backbone(net.body.backbone, m.pretrained,
                                  neck=net.body.neck if m.neck == "face" else None)
        return
    from facelt.models.pretrained import load_pretrained_backbone
    load_pretrained_backbone(net.body.backbone, m.pretrained, m.pretrained_format)


def net_from_config(cfg: Config, num_classes: int = 1) -> OLTRNet:
    """A stage-1 network of ``cfg`` with ``model.pretrained`` loaded, in eval mode: to evaluate
    pretrained weights (e.g. an arcface_torch ``backbone.pth``) without training."""
    net = build_net(cfg, 1, num_classes)
    load_pretrained_weights(net, cfg)
    return net.eval()
