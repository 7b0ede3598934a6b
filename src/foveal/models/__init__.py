"""Architectures, their building blocks and their weights; each module is imported on its own (nothing here is
imported eagerly, so ``import foveal.models.anchors`` does not build the rest).

- :mod:`~foveal.models.efficientnet`: EfficientNet with compound scaling (the paper's Table 1 as rows);
- :mod:`~foveal.models.unet`: U-Net, the paper's network and a U-Net decoder over any backbone;
- :mod:`~foveal.models.retinanet`: RetinaNet (backbone, FPN P3–P7, classification and box subnets), its loss and
  post-processing;
- :mod:`~foveal.models.fpn`: the feature pyramid network with RetinaNet's extra levels P6 and P7;
- :mod:`~foveal.models.anchors`: anchors, box encoding and anchor-to-box matching for RetinaNet;
- :mod:`~foveal.models.backbones`: the backbone contract and the one factory that builds backbones;
- :mod:`~foveal.models.features`: the contract's data: each feature map's channels and stride, the backbone protocol;
- :mod:`~foveal.models.layers`: conv + BN + activation, TF-style "same" padding, stochastic depth;
- :mod:`~foveal.models.registry`: model names → builders, and architectures → rebuilders;
- :mod:`~foveal.models.catalog`: the table ``foveal models`` prints (parameters, FLOPs, resolution per variant);
- :mod:`~foveal.models.hub`: pretrained weights named by hub (``torchvision:<WeightsEnum>``, ``timm:<name>``);
- :mod:`~foveal.models.convert`: EfficientNet weights saved by timm, torchvision or foveal, into foveal's model.

Image pre- and post-processing around a model (normalisation, the detection resize, batching) is in
:mod:`foveal.preprocess`.
"""
