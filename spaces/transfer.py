"""Starting from a pretrained network: torchvision backbones, cut, frozen and fine-tuned, under a
small dense head, on your own images (a folder of class folders, e.g. birds at 224 px).

    hpo search spaces/transfer.py --data path/to/folder [--weights-dir path/to/weights]

Edit the ranges below; a key that is not listed takes its default from hpo/config.py.
Each backbone is seen as five stages (hpo/backbone.py has the table): `cut` keeps stages
1..cut, `frozen` fixes stages 1..frozen (frozen >= cut: the whole backbone is a fixed feature
extractor), and the unfrozen stages learn at `backbone_lr` times the head's learning rate.
Images are resized to `input_size` on the device, a batch at a time, and normalised with
ImageNet's mean and std. A feature extractor without augmentation computes its features
once, and every such trial trains only its head on them (hpo/features.py): far cheaper, so
the search can afford many of them beside the fine-tuned ones.

The pretrained weights are files torchvision downloads: `hpo search` refuses to start when
one the space may need is missing, and prints the command that fetches it.
"""

from hpo.space import choice, dense, intrange, loguniform, uniform

image_size = 224  # every image is resized to 224x224 when decoded (once, then cached)
channels = 3  # ImageNet networks take RGB; grayscale images are converted
metric, mode = "val_acc", "max"
trials = 32
max_epochs = 15
grace_period = 2
reduction_factor = 3
val_fraction = 0.15  # a few thousand images want a larger validation split for a stable choice

dimensions = {
    # the backbone
    "backbone": choice(["resnet18", "resnet50", "vgg16", "efficientnet_b0",
                        "mobilenet_v3_large", "convnext_tiny"]),
    "pretrained": True,  # from scratch on a few thousand images rarely pays; try False
    "cut": intrange(3, 5),  # stages kept: an earlier cut keeps more generic features
    "frozen": intrange(0, 5),  # stages fixed from the input; >= cut: a feature extractor
    "backbone_lr": loguniform(0.01, 1.0, when=lambda c: c["frozen"] < c["cut"]),
    "input_size": choice([128, 160, 224]),  # smaller is faster and loses detail
    # the head: global pooling keeps it small at every input size and cut (a flatten head on
    # a 28x28x512 map would have hundreds of millions of weights)
    "head": "gap",
    "dense_layers": intrange(0, 2),
    **{f"dense_{i}": choice([256, 512, 1024], when=dense(i)) for i in (1, 2)},
    "dense_bn": choice([False, True]),
    "bn": "before",  # the dense layers' BatchNorm, before the activation (as report 004)
    "dropout_head": uniform(0.0, 0.5),
    # augmentation: any of it makes a feature extractor run its backbone every epoch
    "aug_flip": choice([False, True]),  # turn off for images whose left and right differ
    "aug_zoom": choice([0.0, 0.1]),
    # optimisation
    "optimizer": choice(["sgd", "adam", "adamw"]),
    "lr": loguniform(1e-4, 0.05),
    "momentum": uniform(0.8, 0.95, when=lambda c: c["optimizer"] == "sgd"),
    "weight_decay": loguniform(1e-6, 1e-3),
    "label_smoothing": uniform(0.0, 0.1),
    "batch_size": choice([32, 64]),
    "schedule": choice(["constant", "cosine"]),
    "epochs": max_epochs,
    "seed": 0,
}

# The two hand-tuned reports that started from ImageNet networks
# (../shared/reference/reports_002_004.md), evaluated first under this budget.
starting_points = {
    # report 002, experiment 12 (85.91% on CIFAR-10 by hand): VGG16 cut after block3_pool,
    # blocks 1-2 frozen, the head of its best network (dense 1024-1024-512, BatchNorm after
    # ReLU, dropout 0.5), Adam 0.01, ReduceLROnPlateau on val_loss, flips, 20-degree
    # rotations and shifts. It fed VGG16 32x32 images, so input_size 32 (the 4x4x256 map
    # keeps a flatten head small). Not expressible here: its extra 3x3 conv of 512 channels
    # after the cut. Augmentation runs on the images as decoded (224 px): the report's 10%
    # shifts are the largest crop padding the schema allows, 16 px.
    "report002-vgg16": dict(
        backbone="vgg16", pretrained=True, cut=3, frozen=2, backbone_lr=1.0, input_size=32,
        head="flatten", dense_layers=3, dense_1=1024, dense_2=1024, dense_3=512, dense_bn=True,
        bn="after", dropout_head=0.5, optimizer="adam", lr=0.01, weight_decay=0.0,
        label_smoothing=0.0, batch_size=512, schedule="plateau", plateau_patience=5,
        plateau_factor=0.1, aug_flip=True, aug_rotate=20.0, aug_crop=16, aug_zoom=0.0,
    ),
    # report 004, exercise 3, FE-2 (its best, 44.94% on Caltech-UCSD Birds 200): ResNet50 as a
    # frozen feature extractor at 224 px, pooled features, dense 1024-512 with BatchNorm
    # before ReLU and dropout 0.4 (the report drops out before each of the two dense layers,
    # here after each), Adam at Keras' default 0.001, no augmentation (so its features are
    # computed once). Batch size is not stated; 64.
    "report004-resnet50-features": dict(
        backbone="resnet50", pretrained=True, cut=5, frozen=5, input_size=224, head="gap",
        dense_layers=2, dense_1=1024, dense_2=512, dense_bn=True, bn="before",
        dropout_head=0.4, optimizer="adam", lr=0.001, weight_decay=0.0, label_smoothing=0.0,
        batch_size=64, schedule="constant", aug_flip=False, aug_zoom=0.0,
    ),
    # report 004, exercise 3, FT (44.77%, in much more time): the whole ResNet50 fine-tuned
    # under one new output layer with SGD 0.01, momentum 0.9 (Adam did badly). Batch size is
    # not stated; 32.
    "report004-resnet50-finetune": dict(
        backbone="resnet50", pretrained=True, cut=5, frozen=0, backbone_lr=1.0,
        input_size=224, head="gap", dense_layers=0, dropout_head=0.0, optimizer="sgd",
        lr=0.01, momentum=0.9, nesterov=False, weight_decay=0.0, label_smoothing=0.0,
        batch_size=32, schedule="constant", aug_flip=False, aug_zoom=0.0,
    ),
}
