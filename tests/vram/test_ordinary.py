"""Other people's training and inference scripts, as their docs and tutorials write them.

Each test is a script the way PyTorch's tutorials, transformers' and diffusers' docs and
Lightning's README write one, not adapted to the plugin: the device picked with
``"cuda" if torch.cuda.is_available() else "cpu"`` or ``torch.device("cuda")`` in the
test, the model, optimizer, ``GradScaler``, batches and ``DataLoader`` made in the body,
batches moved with ``x.to(device)``, the device queried with ``torch.cuda``. The only
change is ``vram.run`` around the step each test measures. They run on CI on the
estimator against ``baselines/estimate.yaml``; on a GPU ``scripts/gpu_check.sh ordinary``
measures them with the ``cuda`` backend and ``benchmarks/ordinary_accuracy.py`` compares
the two (docs/estimator.md, "Other people's scripts").
"""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset, random_split

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
    ViTConfig,
    ViTForImageClassification,
    get_linear_schedule_with_warmup,
)

from pytest_vram import claims  # noqa: E402

pytestmark = pytest.mark.vram


# -- PyTorch's quickstart -------------------------------------------------------------------
class NeuralNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(28 * 28, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, 10),
        )

    def forward(self, x):
        x = self.flatten(x)
        logits = self.linear_relu_stack(x)
        return logits


def fake_mnist(n=256):
    """FashionMNIST's shapes: (n, 1, 28, 28) images, 10 classes."""
    return TensorDataset(torch.rand(n, 1, 28, 28), torch.randint(0, 10, (n,)))


def test_quickstart_train_epoch(vram):
    device = (
        "cuda"
        if torch.cuda.is_available()
        else "mps"
        if torch.backends.mps.is_available()
        else "cpu"
    )
    train_dataloader = DataLoader(fake_mnist(), batch_size=64, shuffle=True)
    model = NeuralNetwork().to(device)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def train(dataloader, model, loss_fn, optimizer):
        model.train()
        for X, y in dataloader:
            X, y = X.to(device), y.to(device)

            # Compute prediction error
            pred = model(X)
            loss = loss_fn(pred, y)

            # Backpropagation
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    vram.run(train, train_dataloader, model, loss_fn, optimizer)


def test_quickstart_predict(vram):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    test_dataloader = DataLoader(fake_mnist(), batch_size=64)
    model = NeuralNetwork().to(device)

    def predict(dataloader, model):
        model.eval()
        predictions = []
        with torch.inference_mode():
            for X, _ in dataloader:
                X = X.to(device)
                predictions.append(model(X).argmax(1))
        return torch.cat(predictions)

    vram.run(predict, test_dataloader, model)


# -- PyTorch's automatic mixed precision recipe ---------------------------------------------
def make_model(in_size, out_size, num_layers):
    layers = []
    for _ in range(num_layers - 1):
        layers.append(torch.nn.Linear(in_size, in_size))
        layers.append(torch.nn.ReLU())
    layers.append(torch.nn.Linear(in_size, out_size))
    return torch.nn.Sequential(*tuple(layers)).cuda()


def test_amp_recipe_gradscaler(vram):
    batch_size = 64
    in_size = 256
    out_size = 256
    num_layers = 3
    epochs = 1
    device = "cuda"
    torch.backends.cudnn.benchmark = False

    data = [torch.randn(batch_size, in_size, device=device) for _ in range(4)]
    targets = [torch.randn(batch_size, out_size, device=device) for _ in range(4)]
    loss_fn = torch.nn.MSELoss().cuda()

    net = make_model(in_size, out_size, num_layers)
    opt = torch.optim.SGD(net.parameters(), lr=0.001)
    scaler = torch.amp.GradScaler("cuda")

    def train():
        for _ in range(epochs):
            for input, target in zip(data, targets, strict=True):
                with torch.autocast(device_type=device, dtype=torch.float16):
                    output = net(input)
                    assert output.dtype is torch.float16
                    loss = loss_fn(output, target)
                    assert loss.dtype is torch.float32
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)

    vram.run(train)


def test_amp_gradient_clipping(vram):
    device = torch.device("cuda")
    model = nn.Sequential(nn.Linear(512, 1024), nn.GELU(), nn.Linear(1024, 512)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cuda")
    max_norm = 1.0

    def step(x, y):
        optimizer.zero_grad()
        with torch.autocast(device_type="cuda", dtype=torch.float16):
            loss = F.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        # Unscales the gradients of optimizer's assigned params in-place
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        scaler.step(optimizer)
        scaler.update()

    x = torch.randn(32, 512).to(device)
    y = torch.randn(32, 512).to(device)
    vram.run(step, x, y)


def test_legacy_cuda_amp_api(vram):
    """Older scripts' AMP: ``torch.cuda.amp.GradScaler()`` and ``torch.cuda.amp.autocast()``."""
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with pytest.warns(FutureWarning):
        scaler = torch.cuda.amp.GradScaler()
    inputs, labels = torch.randn(64, 256).cuda(), torch.randint(0, 10, (64,)).cuda()

    def step():
        optimizer.zero_grad()
        with pytest.warns(FutureWarning), torch.cuda.amp.autocast():
            loss = nn.functional.cross_entropy(model(inputs), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    vram.run(step)


def test_torchrun_style_local_rank(vram):
    """A script written for torchrun, run as one process: the device is an index."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local_rank)
    model = nn.Sequential(nn.Linear(128, 512), nn.ReLU(), nn.Linear(512, 128)).to(local_rank)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(32, 128).cuda(local_rank)
    y = torch.randn(32, 128, device=local_rank)

    def step():
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()

    vram.run(step)


def test_gradient_accumulation(vram):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 10)).to(
        device
    )
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(
        TensorDataset(torch.randn(128, 128), torch.randint(0, 10, (128,))),
        batch_size=16,
        shuffle=True,
        drop_last=True,
    )
    accumulation_steps = 4

    def train_epoch():
        model.train()
        optimizer.zero_grad()
        for i, (inputs, labels) in enumerate(loader):
            inputs, labels = inputs.to(device), labels.to(device)
            outputs = model(inputs)
            loss = criterion(outputs, labels)
            loss = loss / accumulation_steps
            loss.backward()
            if (i + 1) % accumulation_steps == 0:
                optimizer.step()
                optimizer.zero_grad()

    vram.run(train_epoch)


def test_batch_size_from_device_memory(vram):
    """Picks the batch from the card's memory, reports memory as training scripts do."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    total = torch.cuda.get_device_properties(0).total_memory
    free, _ = torch.cuda.mem_get_info()
    assert free <= total
    batch_size = 64 if total >= 40 * 1024**3 else 16
    model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256)).to(device)
    optimizer = torch.optim.Adam(model.parameters())
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()

    def step():
        x = torch.randn(batch_size, 256, device=device)
        loss = model(x).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()

    vram.run(step)
    assert torch.cuda.max_memory_allocated() >= torch.cuda.memory_allocated() >= before
    print(
        f"{torch.cuda.get_device_name(0)}: batch {batch_size}, "
        f"peak {torch.cuda.max_memory_allocated() / 2**20:.1f} MiB"
    )


def test_train_and_eval_with_lr_schedule(vram):
    """Two phases of one script, measured separately: a training epoch, then evaluation."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dataset = TensorDataset(torch.randn(320, 64), torch.randint(0, 4, (320,)))
    train_set, val_set = random_split(dataset, [0.8, 0.2])
    train_loader = DataLoader(train_set, batch_size=32, shuffle=True)
    val_loader = DataLoader(val_set, batch_size=64)
    model = nn.Sequential(nn.Linear(64, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 4)).to(
        device
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=0.1, total_steps=len(train_loader)
    )

    def train_one_epoch():
        model.train()
        for xb, yb in train_loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            scheduler.step()

    def evaluate():
        model.eval()
        losses = []
        with torch.no_grad():
            for xb, yb in val_loader:
                xb, yb = xb.to(device), yb.to(device)
                losses.append(F.cross_entropy(model(xb), yb, reduction="none"))
        return torch.cat(losses).mean()

    vram.run(train_one_epoch, name="train")
    vram.run(evaluate, name="eval")


# -- convolutional networks, without torchvision ---------------------------------------------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision's ResNet layout (7x7 stem, max pool, stages of basic blocks), two stages."""

    def __init__(self, layers=(2, 2), num_classes=10):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(128 * BasicBlock.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes, blocks, stride=1):
        layers = [BasicBlock(self.inplanes, planes, stride)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def test_resnet_train_epoch(vram):
    torch.backends.cudnn.benchmark = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = ResNet().to(device)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=200)
    trainset = TensorDataset(torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)))
    trainloader = DataLoader(trainset, batch_size=32, shuffle=True, num_workers=2, pin_memory=True)

    def train(epoch):
        net.train()
        for inputs, targets in trainloader:
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            optimizer.zero_grad()
            outputs = net(inputs)
            loss = criterion(outputs, targets)
            loss.backward()
            optimizer.step()
        scheduler.step()

    vram.run(train, 0)


def conv_bn(inp, oup, kernel, stride, groups=1):
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden_dim = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers = [] if expand_ratio == 1 else [conv_bn(inp, hidden_dim, 1, 1)]
        layers += [
            conv_bn(hidden_dim, hidden_dim, 3, stride, groups=hidden_dim),  # depthwise
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),  # pointwise-linear
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2Stem(nn.Module):
    """MobileNetV2's first stages: a 3->32 3x3 stride-2 stem and inverted residuals."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 32, 3, 2),
            InvertedResidual(32, 16, 1, 1),
            InvertedResidual(16, 24, 2, 6),
            InvertedResidual(24, 24, 1, 6),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(24, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
        return self.classifier(x)


def test_mobilenet_inference_fp16_channels_last(vram):
    device = torch.device("cuda")
    model = MobileNetV2Stem().to(device, memory_format=torch.channels_last).half().eval()
    images = torch.randn(32, 3, 32, 32).to(device).half()
    images = images.contiguous(memory_format=torch.channels_last)

    def infer():
        with torch.inference_mode():
            return model(images).softmax(dim=-1)

    vram.run(infer)


class PatchEmbed(nn.Module):
    """Image to patch embedding, as timm and the ViT paper's code write it."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768):
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, C)


class VisionTransformer(nn.Module):
    def __init__(self, img_size=224, patch_size=16, dim=768, depth=1, heads=12, classes=10):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, dim))
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x):
        x = self.patch_embed(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def test_vit_patch_embedding_amp_train(vram):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = VisionTransformer().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    scaler = torch.amp.GradScaler()
    images = torch.randn(16, 3, 224, 224, device=device)
    labels = torch.randint(0, 10, (16,), device=device)

    def train_step():
        with torch.autocast(device_type="cuda", dtype=torch.float16):
            loss = F.cross_entropy(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    vram.run(train_step)


# -- techniques ------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class CheckpointedNet(nn.Module):
    def __init__(self, dim=256, depth=4):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))

    def forward(self, x):
        for block in self.blocks:
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        return x


def test_activation_checkpointing(vram):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = CheckpointedNet().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(8, 128, 256, device=device)

    def step():
        loss = model(x).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    vram.run(step)


def test_finetune_frozen_backbone_with_ema(vram):
    """Fine-tuning a head on a frozen backbone, with an EMA copy of the model (timm's
    ModelEmaV2 idiom)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone = nn.Sequential(nn.Linear(128, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU())
    head = nn.Linear(512, 10)
    model = nn.Sequential(backbone, head).to(device)
    for p in backbone.parameters():
        p.requires_grad = False
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.Adam(filter(lambda p: p.requires_grad, model.parameters()), lr=1e-3)
    decay = 0.999

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for ema_v, model_v in zip(
                ema.state_dict().values(), model.state_dict().values(), strict=True
            ):
                ema_v.copy_(ema_v * decay + (1.0 - decay) * model_v)

    x, y = torch.randn(64, 128).to(device), torch.randint(0, 10, (64,)).to(device)
    vram.run(step, x, y)


# -- Lightning-style module, called by hand ---------------------------------------------------
class LightningModule(nn.Module):
    """The part of ``lightning.LightningModule`` a training loop calls (no lightning here)."""

    def log(self, name, value, **kwargs):
        self.logged = {name: value.detach() if isinstance(value, torch.Tensor) else value}


class LitAutoEncoder(LightningModule):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(28 * 28, 64), nn.ReLU(), nn.Linear(64, 3))
        self.decoder = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 28 * 28))

    def training_step(self, batch, batch_idx):
        # training_step defines the train loop.
        x, _ = batch
        x = x.view(x.size(0), -1)
        z = self.encoder(x)
        x_hat = self.decoder(z)
        loss = F.mse_loss(x_hat, x)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)
        return optimizer


def test_lightning_style_training_step(vram):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    autoencoder = LitAutoEncoder().to(device)
    optimizer = autoencoder.configure_optimizers()
    train_loader = DataLoader(fake_mnist(128), batch_size=32)

    def fit_one_epoch():
        autoencoder.train()
        for batch_idx, batch in enumerate(train_loader):
            batch = [t.to(device) for t in batch]
            loss = autoencoder.training_step(batch, batch_idx)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    vram.run(fit_one_epoch)


# -- transformers, built from configs --------------------------------------------------------
def test_gpt2_causal_lm_finetune(vram):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = GPT2Config(n_embd=128, n_layer=2, n_head=4, n_positions=256, vocab_size=1000)
    model = GPT2LMHeadModel(config).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    num_training_steps = 100
    lr_scheduler = get_linear_schedule_with_warmup(
        optimizer, num_warmup_steps=10, num_training_steps=num_training_steps
    )
    batch = {"input_ids": torch.randint(0, 1000, (4, 128))}
    batch["labels"] = batch["input_ids"].clone()
    batch = {k: v.to(device) for k, v in batch.items()}

    def training_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            outputs = model(**batch)
        loss = outputs.loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()

    vram.run(training_step)


def test_gpt2_generate(vram):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = GPT2Config(n_embd=128, n_layer=2, n_head=4, n_positions=256, vocab_size=1000)
    model = GPT2LMHeadModel(config).to(device).eval()
    input_ids = torch.randint(0, 1000, (2, 24)).to(device)
    attention_mask = torch.ones_like(input_ids)

    def generate():
        # eos_token_id=None: every sequence runs to max_new_tokens (docs/estimator.md,
        # "model.generate")
        return model.generate(
            input_ids,
            attention_mask=attention_mask,
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=config.eos_token_id,
            eos_token_id=None,
        )

    vram.run(generate)


def test_bert_sequence_classification_finetune(vram):
    """transformers' "fine-tune in native PyTorch" loop, with the weight-decay groups."""
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    config = BertConfig(
        vocab_size=1000,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        num_labels=3,
    )
    model = BertForSequenceClassification(config)
    model.to(device)
    no_decay = ["bias", "LayerNorm.weight"]
    optimizer_grouped_parameters = [
        {
            "params": [
                p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)
            ],
            "weight_decay": 0.01,
        },
        {
            "params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)],
            "weight_decay": 0.0,
        },
    ]
    optimizer = torch.optim.AdamW(optimizer_grouped_parameters, lr=2e-5)
    input_ids = torch.randint(0, 1000, (8, 64))
    attention_mask = torch.ones(8, 64, dtype=torch.long)
    attention_mask[:4, 48:] = 0  # padded sequences
    dataset = TensorDataset(input_ids, attention_mask, torch.randint(0, 3, (8,)))
    train_dataloader = DataLoader(dataset, shuffle=True, batch_size=8)

    def train():
        model.train()
        for batch in train_dataloader:
            batch = {
                k: v.to(device)
                for k, v in zip(("input_ids", "attention_mask", "labels"), batch, strict=True)
            }
            outputs = model(**batch)
            loss = outputs.loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    vram.run(train)


def test_llama_gqa_bf16_train(vram):
    device = "cuda"
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    model = LlamaForCausalLM(config).to(device=device, dtype=torch.bfloat16)
    model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    input_ids = torch.randint(0, config.vocab_size, (2, 128), device=device)

    def step():
        out = model(input_ids=input_ids, labels=input_ids)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    vram.run(step)


def test_precision_from_device_capability(vram):
    """Picks the device, the autocast dtype and the batch as training scripts do, from
    ``device_count``, ``current_device``, the capability and the free memory."""
    assert torch.cuda.device_count() >= 1
    device = torch.device("cuda", torch.cuda.current_device())
    major, minor = torch.cuda.get_device_capability(device)
    amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    props = torch.cuda.get_device_properties(device)
    free, total = torch.cuda.mem_get_info(device)
    assert free <= total and props.multi_processor_count > 0
    batch_size = 32 if free > 8 * 1024**3 else 8
    model = nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 512)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    def step():
        x = torch.randn(batch_size, 512, device=device)
        with torch.autocast("cuda", dtype=amp_dtype):
            loss = model(x).float().pow(2).mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    vram.run(step)
    print(
        f"cuda:{device.index} {props.name} sm{major}{minor}, {amp_dtype}, "
        f"reserved {torch.cuda.memory_reserved(device) / 2**20:.1f} MiB"
    )


def test_greedy_decoding_with_kv_cache(vram):
    """A hand-written greedy decoding loop that feeds the cache back, as generation
    tutorials write one before they reach ``generate``."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config).to(device).eval()
    input_ids = torch.randint(0, config.vocab_size, (4, 32), device=device)

    def decode(max_new_tokens=16):
        generated = input_ids
        next_input = input_ids
        past_key_values = None
        with torch.no_grad():
            for _ in range(max_new_tokens):
                out = model(input_ids=next_input, past_key_values=past_key_values, use_cache=True)
                past_key_values = out.past_key_values
                next_token = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
                generated = torch.cat([generated, next_token], dim=-1)
                next_input = next_token
        return generated

    vram.run(decode)


@pytest.fixture(scope="session")
def tiny_llama_checkpoint(tmp_path_factory):
    """A small Llama saved once for the session, as a project's conftest keeps one."""
    path = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.mark.parametrize("device_map", ["cuda", "auto"])
def test_llama_from_pretrained_generate(vram, tiny_llama_checkpoint, device_map):
    pytest.importorskip("accelerate")  # transformers needs it for any device_map
    model = AutoModelForCausalLM.from_pretrained(
        tiny_llama_checkpoint, dtype=torch.bfloat16, device_map=device_map
    )
    model.eval()
    input_ids = torch.randint(0, 1000, (2, 32)).to(model.device)

    def generate():
        with torch.inference_mode():
            # eos_token_id=None: every sequence runs to max_new_tokens (docs/estimator.md,
            # "model.generate")
            return model.generate(input_ids, max_new_tokens=8, do_sample=False, eos_token_id=None)

    vram.run(generate)


def test_t5_seq2seq_train(vram):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = T5Config(
        vocab_size=1000,
        d_model=128,
        d_kv=32,
        d_ff=256,
        num_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    model = T5ForConditionalGeneration(config).to(device)
    optimizer = transformers.Adafactor(
        model.parameters(), lr=1e-3, scale_parameter=False, relative_step=False, warmup_init=False
    )
    input_ids = torch.randint(1, 1000, (4, 64)).to(device)
    labels = torch.randint(1, 1000, (4, 16))
    labels[:, 12:] = -100  # padding ignored by the loss
    labels = labels.to(device)

    def step():
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    vram.run(step)


def test_vit_image_classification_fp16(vram):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=10,
    )
    model = ViTForImageClassification(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    scaler = torch.amp.GradScaler("cuda")
    pixel_values = torch.randn(2, 3, 32, 32).to(device)
    labels = torch.randint(0, 10, (2,)).to(device)

    def step():
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(pixel_values=pixel_values, labels=labels).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()

    vram.run(step)


# -- PyTorch's nn.Transformer language-modeling tutorial -------------------------------------
class PositionalEncoding(nn.Module):
    def __init__(self, d_model, dropout=0.1, max_len=5000):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, 1, d_model)
        pe[:, 0, 0::2] = torch.sin(position * div_term)
        pe[:, 0, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x):
        x = x + self.pe[: x.size(0)]
        return self.dropout(x)


class TransformerModel(nn.Module):
    def __init__(self, ntoken, d_model, nhead, d_hid, nlayers, dropout=0.5):
        super().__init__()
        self.pos_encoder = PositionalEncoding(d_model, dropout)
        encoder_layers = nn.TransformerEncoderLayer(d_model, nhead, d_hid, dropout)
        self.transformer_encoder = nn.TransformerEncoder(encoder_layers, nlayers)
        self.embedding = nn.Embedding(ntoken, d_model)
        self.d_model = d_model
        self.linear = nn.Linear(d_model, ntoken)

    def forward(self, src, src_mask=None):
        src = self.embedding(src) * math.sqrt(self.d_model)
        src = self.pos_encoder(src)
        output = self.transformer_encoder(src, src_mask)
        return self.linear(output)


def test_transformer_language_model_tutorial(vram):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ntokens, bptt, batch_size = 1000, 35, 20
    model = TransformerModel(ntokens, 128, 2, 128, 2, 0.2).to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
    train_data = torch.randint(0, ntokens, (bptt * 3 + 1, batch_size)).to(device)

    def get_batch(source, i):
        seq_len = min(bptt, len(source) - 1 - i)
        data = source[i : i + seq_len]
        target = source[i + 1 : i + 1 + seq_len].reshape(-1)
        return data, target

    def train():
        model.train()
        src_mask = nn.Transformer.generate_square_subsequent_mask(bptt).to(device)
        for i in range(0, train_data.size(0) - 1, bptt):
            data, targets = get_batch(train_data, i)
            output = model(data, src_mask[: data.size(0), : data.size(0)])
            loss = criterion(output.view(-1, ntokens), targets)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            optimizer.step()

    vram.run(train)


# -- a diffusion UNet --------------------------------------------------------------------------
def test_diffusers_unet_ddpm_train_step(vram):
    diffusers = pytest.importorskip("diffusers")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = diffusers.UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).to(device)
    noise_scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    clean_images = torch.randn(8, 3, 32, 32).to(device)

    def train_step():
        noise = torch.randn(clean_images.shape, device=clean_images.device)
        bs = clean_images.shape[0]
        timesteps = torch.randint(
            0, noise_scheduler.config.num_train_timesteps, (bs,), device=clean_images.device
        ).long()
        noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
        noise_pred = model(noisy_images, timesteps, return_dict=False)[0]
        loss = F.mse_loss(noise_pred, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    vram.run(train_step)


# -- where the trainer is made: the body, a fixture, vram.build --------------------------------
def make_trainer(device):
    """A model, AdamW and a GradScaler, as a project's helper makes them."""
    model = nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 512)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda")
    return model, optimizer, scaler


def amp_train_step(model, optimizer, scaler, x):
    with torch.autocast(device_type="cuda", dtype=torch.float16):
        loss = model(x).float().pow(2).mean()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()


@pytest.fixture
def trainer():
    return make_trainer("cuda")


def test_trainer_made_in_the_body(vram):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, optimizer, scaler = make_trainer(device)
    x = torch.randn(64, 512, device=device)
    vram.run(amp_train_step, model, optimizer, scaler, x)


def test_trainer_made_by_a_fixture(trainer, vram):
    x = torch.randn(64, 512, device="cuda")
    vram.run(amp_train_step, *trainer, x)


def test_trainer_made_in_vram_build(vram):
    model, optimizer, scaler = vram.build(make_trainer, vram.device)
    x = torch.randn(64, 512, device=vram.device)
    vram.run(amp_train_step, model, optimizer, scaler, x)


#: the three count the same bytes, on the GPU and on the estimator: the fixture's and the
#: build step's figures equal the body's (at most it, and it at most them)
_BODY = "tests/vram/test_ordinary.py::test_trainer_made_in_the_body"
_ELSEWHERE = {
    where: f"tests/vram/test_ordinary.py::test_trainer_made_{where}"
    for where in ("by_a_fixture", "in_vram_build")
}
vram_claims = [
    claim
    for figure in (claims.model, claims.peak)
    for where, key in _ELSEWHERE.items()
    for claim in (
        claims.Claim.at_most(
            f"test_{figure.__name__}_made_{where}_at_most_in_the_body", figure(key), figure(_BODY)
        ),
        claims.Claim.at_most(
            f"test_{figure.__name__}_made_in_the_body_at_most_{where}", figure(_BODY), figure(key)
        ),
    )
]
