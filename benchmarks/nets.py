"""The benchmark's networks written by hand in PyTorch, as a user would without shapecheck.

Each is the module its spec under specs/ describes (the smoke test checks the parameter counts
and output shapes against ``shapecheck plan``), so torchinfo and the meta device are timed on
the same network as ``shapecheck plan``. Imported both as ``benchmarks.nets`` and, from the
child scripts run by path, as ``nets``. torch is imported by the builders only, so the
harness reads SPECS and INPUTS without it.
"""

from __future__ import annotations

# The spec file of each network, relative to the repository root, and the input torchinfo and
# the meta forward pass get: the spec's batch where it is a number (the lecture net's 64),
# else 1.
SPECS = {
    "lecture_cnn": "specs/lecture_cnn.yaml",
    "alexnet": "specs/alexnet.yaml",
    "vgg16": "specs/vgg16.yaml",
    "resnet50": "specs/zoo/resnet50.yaml",
}
INPUTS = {
    "lecture_cnn": (64, 1, 28, 28),
    "alexnet": (1, 3, 224, 224),
    "vgg16": (1, 3, 224, 224),
    "resnet50": (1, 3, 224, 224),
}


def lecture_cnn():
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 10, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(10, 20, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), nn.Linear(320, 10),
    )


def alexnet():
    """As torchvision.models.alexnet builds it."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.AdaptiveAvgPool2d((6, 6)), nn.Flatten(),
        nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(),
        nn.Linear(4096, 1000),
    )


def vgg16():
    """As torchvision.models.vgg16 builds it (configuration D, no batchnorm)."""
    from torch import nn

    layers: list[nn.Module] = []
    channels = 3
    for stage in ([64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]):
        for out in stage:
            layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1), nn.ReLU()]
            channels = out
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(),
        nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 1000),
    )


def resnet50():
    """As torchvision.models.resnet50 builds it (bottleneck blocks, stride on the 3×3 conv)."""
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, c_in: int, width: int, stride: int) -> None:
            super().__init__()
            c_out = width * 4
            self.body = nn.Sequential(
                nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
                nn.ReLU(), nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
            self.downsample = (
                nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                              nn.BatchNorm2d(c_out))
                if stride != 1 or c_in != c_out else nn.Identity())
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.body(x) + self.downsample(x))

    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(3, 2, 1)]
    c_in = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(c_in, width, stride if i == 0 else 1))
            c_in = width * 4
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000))


BUILD = {"lecture_cnn": lecture_cnn, "alexnet": alexnet, "vgg16": vgg16, "resnet50": resnet50}
