"""
autoresearch training template, PyTorch.

    python train.py          # trains for TIME_BUDGET seconds, evaluates, prints a summary

This is the file an experiment edits. It reads top to bottom: hyperparameters,
device, model, optimizer, the training loop and evaluation. Data, tokenizer,
the metric (val_bpb, bits per byte on held-out text) and the report (the
summary block and data/last_run.json) come from prepare.py, which is fixed, so
every run is measured and reported the same way.

bench.py imports this file as a module to profile it, so keep these names:
DEVICE, DEVICE_TYPE, DEVICE_BATCH_SIZE, GRAD_ACCUM_STEPS, COMPILE, autocast(),
to_device(), build_model(), build_optimizers(), set_schedule() and main();
and keep the training itself inside main() (importing must not train).
"""

import time

START_TIME = time.time()  # total_seconds counts from here, imports included

import contextlib  # noqa: E402
import ctypes
import math
import os
import platform
import re
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# Data, metric and report come from the fixed harness. The dataset is chosen
# outside this file, by AUTORESEARCH_DATASET (the plugin's run-experiment sets it
# from the session; by hand: AUTORESEARCH_DATASET=classics python train.py;
# default climbmix), and so is the budget, by AUTORESEARCH_TIME_BUDGET.

import prepare  # noqa: E402
from prepare import MAX_SEQ_LEN, SEED, TIME_BUDGET, VOCAB_SIZE  # noqa: E402  (tokens per row, the run's seed, seconds, vocab)

# ---------------------------------------------------------------------------
# Device: CUDA, then Apple's MPS, then the CPU. DEVICE_TYPE picks the code below
# (sizes, precision, compile, attention kernels); DEVICE is where the tensors live.
# They differ only when AUTORESEARCH_DEVICE names a device this machine lacks: then
# that device's code runs on the CPU. The tests use this to run the CUDA and MPS
# code on a CPU (at toy size: bf16 on a CPU is slow); a real run never needs it.

AVAILABLE = [d for d, ok in (("cuda", torch.cuda.is_available()), ("mps", torch.backends.mps.is_available()),
                             ("cpu", True)) if ok]
DEVICE_TYPE = os.environ.get("AUTORESEARCH_DEVICE") or AVAILABLE[0]
if DEVICE_TYPE not in ("cuda", "mps", "cpu"):
    sys.exit(f"AUTORESEARCH_DEVICE={DEVICE_TYPE}: use cuda, mps or cpu (or leave it unset)")
DEVICE = torch.device(DEVICE_TYPE if DEVICE_TYPE in AVAILABLE else "cpu")

# ---------------------------------------------------------------------------
# Hyperparameters. Model size and batch depend on the device: a GPU wants a
# model that fills it, a CPU wants one small enough to take a few hundred steps
# in a few minutes (a model that sees too few tokens learns nothing).

if DEVICE_TYPE == "cuda":
    DEPTH = 8                    # transformer blocks
    WIDTH = 512                  # model dimension (a multiple of HEAD_DIM)
    HEAD_DIM = 128
    DEVICE_BATCH_TOKENS = 2**18  # tokens per forward/backward
    TOTAL_BATCH_TOKENS = 2**19   # tokens per optimizer step (gradient accumulation)
elif DEVICE_TYPE == "mps":
    DEPTH, WIDTH, HEAD_DIM = 6, 384, 64
    DEVICE_BATCH_TOKENS = TOTAL_BATCH_TOKENS = 2**15
else:
    # Tuned for a 2-minute run on 2 cores (docs/example-session/): there, steps are
    # what is scarce. Two layers beat three and four (more steps in the budget) and
    # one (too little model); 4096 tokens per step beat 2048 (noisier, and the
    # optimizer's share grows) and 8192 (half the steps).
    DEPTH, WIDTH, HEAD_DIM = 2, 256, 64
    # Micro-batches of 2048 tokens: small enough that a forward/backward's
    # activations stay in the CPU's caches, large enough that the passes are few.
    DEVICE_BATCH_TOKENS = 2**11
    TOTAL_BATCH_TOKENS = 2**12

WINDOW_PATTERN = "SSSL"   # per layer, repeated: S = local window, L = full context
SHORT_WINDOW = MAX_SEQ_LEN // 2  # tokens an S layer looks back over (the last layer is always L)
LOGIT_SOFTCAP = 15.0      # logits = cap * tanh(logits / cap): bounded, smooth

# Optimizer. Matrices inside the blocks use Muon; embeddings, the output head and
# scalars use AdamW. The AdamW rates are tuned at width 768 and scaled by
# dmodel_scale(WIDTH) = (WIDTH / 768) ** -0.5, so a wider model takes smaller steps.
MATRIX_LR = 0.04          # Muon
EMBEDDING_LR = 0.6        # AdamW: token and value embeddings
UNEMBEDDING_LR = 0.002 if DEVICE_TYPE == "cpu" else 0.004  # AdamW: output head (CPU: 0.001-0.008 tried, 0.002 best)
SCALAR_LR = 0.5           # AdamW: per-head value-embedding gates
ADAM_BETAS = (0.8, 0.95)
WEIGHT_DECAY = 0.0        # decoupled, on the Muon matrices, scaled by the learning rate
MUON_MOMENTUM = (0.85, 0.95, 300)  # momentum ramps from the first to the second over this many steps

# Schedule over the wall-clock budget: warm up, hold, then decay linearly to the end.
WARMUP_RATIO = 0.0
WARMDOWN_RATIO = 0.5
FINAL_LR_FRAC = 0.0

COMPILE = DEVICE_TYPE == "cuda"   # torch.compile; on a 2-core CPU the compile costs more than it saves
# torch.compile fuses chains of elementwise ops by itself. Without it (CPU, MPS)
# hand-fused twins of the loss, RMSNorm and ReLU^2 do the same math in fewer
# trips through memory. The plain code is THE definition: main() checks the
# twins against it at startup and runs the plain code if they differ.
HAND_FUSED = not COMPILE
LOSS_CHUNK_ELEMENTS = 2**20       # logits per chunk of the fused loss (4 MB: stays in cache)
WARMUP_STEPS = 10 if COMPILE else 0  # first steps (they compile) not counted in the budget
LOSS_LIMIT = 3 * math.log(VOCAB_SIZE)  # a loss this high (3x a uniform guess) means training diverged

DEVICE_BATCH_SIZE = max(1, DEVICE_BATCH_TOKENS // MAX_SEQ_LEN)  # rows per forward/backward
GRAD_ACCUM_STEPS = max(1, TOTAL_BATCH_TOKENS // (DEVICE_BATCH_SIZE * MAX_SEQ_LEN))

# ---------------------------------------------------------------------------
# Runtime settings.

torch.manual_seed(SEED)
if DEVICE_TYPE == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
if DEVICE.type == "cpu" and sys.platform.startswith("linux"):
    # glibc serves big blocks with mmap and unmaps them when freed, so every
    # step would page-fault its large activations in afresh (measured: a third
    # of the time of the loss). Keeping freed memory in the heap avoids that.
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)          # M_MMAP_MAX = 0: no mmap for big blocks
        libc.mallopt(-1, 2**40)      # M_TRIM_THRESHOLD: never trim the heap
    except OSError:
        pass

def autocast():
    """bf16 autocast on CUDA; plain fp32 elsewhere (bf16 matmuls are slow on CPUs)."""
    if DEVICE_TYPE == "cuda":
        return torch.autocast(device_type=DEVICE.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

def to_device(x, y):
    """NumPy int32 (B, T) batches from prepare.py -> int64 tensors on DEVICE."""
    x = torch.from_numpy(np.ascontiguousarray(x)).to(DEVICE, non_blocking=True).long()
    y = torch.from_numpy(np.ascontiguousarray(y)).to(DEVICE, non_blocking=True).long()
    return x, y

# ---------------------------------------------------------------------------
# Attention kernels. Causal full attention uses PyTorch's SDPA (flash kernels on
# CUDA and CPU). Sliding windows need a mask: on CUDA, FlexAttention compiles
# the mask into block-sparse kernels that skip the masked blocks; elsewhere
# SDPA takes a boolean mask. If the flash-attn package is already installed it
# is used on CUDA (nothing is ever downloaded at run time). Both need a real GPU:
# flash-attn is CUDA kernels, and FlexAttention has no backward pass on a CPU, so
# the CUDA code run on a CPU (AUTORESEARCH_DEVICE) trains with the mask. main()
# prints one line naming the kernels in use, and why when it is not the fastest.

try:
    from flash_attn import flash_attn_func  # optional, only if already installed
except Exception:
    flash_attn_func = None
try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    if DEVICE_TYPE == "cuda":
        flex_attention = torch.compile(flex_attention, dynamic=False)
except Exception:
    flex_attention = None

USE_FLASH = DEVICE.type == "cuda" and flash_attn_func is not None
USE_FLEX = DEVICE.type == "cuda" and flex_attention is not None and not USE_FLASH
_masks = {}

def window_mask(window, T):
    """The mask of causal attention over the last `window` positions, built once
    per shape (build_model builds them before any compile sees the model)."""
    key = (window, T)
    if key not in _masks:
        if USE_FLEX:
            def sliding(b, h, qi, ki):
                return (qi >= ki) & (qi - ki < window)
            _masks[key] = create_block_mask(sliding, None, None, T, T, device=DEVICE)
        else:
            i = torch.arange(T, device=DEVICE)
            _masks[key] = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)
    return _masks[key]

def attention(q, k, v, window):
    """q, k, v: (B, T, H, D). Causal attention over the last `window` positions."""
    T = q.size(1)
    if USE_FLASH:
        w = (-1, 0) if window >= T else (window - 1, 0)
        return flash_attn_func(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=True, window_size=w)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
    if window >= T:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    elif USE_FLEX:
        y = flex_attention(q, k, v, block_mask=window_mask(window, T))
    else:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=window_mask(window, T))
    return y.transpose(1, 2)

def attention_kernels(windows, T):
    """The line main() prints: the kernels attention() runs for these layer windows."""
    short = ", ".join(str(w) for w in sorted({w for w in windows if w < T}))
    if USE_FLASH:
        return "attention: flash-attn" + (f" (sliding window {short})" if short else "")
    if not short:
        return "attention: sdpa (causal)"
    if USE_FLEX:
        return f"attention: flex (sliding window {short}), sdpa (full context)"
    line = f"attention: sdpa with a mask (sliding window {short}), sdpa (full context)"
    if DEVICE_TYPE == "cuda":   # the CUDA code wants flex: say why it is not used
        line += " | not flex: " + ("it has no backward on a CPU" if DEVICE.type == "cpu" else "not in this torch")
    return line

# ---------------------------------------------------------------------------
# The model: a small modern GPT.
#  - pre-norm residual blocks; RMSNorm without weights (a learned gain adds little)
#  - rotary position embeddings; RMSNorm on queries and keys (QK-norm) keeps the
#    attention logits in range without a learning-rate warm-up
#  - ReLU^2 MLP: relu(x)^2 is cheap and trains better than GELU at this scale
#  - value embeddings: on alternate layers a second token embedding is added to
#    the values through a learned per-head gate; almost free, helps small models
#  - sliding-window attention on some layers (WINDOW_PATTERN)
#  - soft-capped logits and an output head not tied to the input embedding
#
# The model's norm, activation and loss are the three functions right below:
# they are THE definitions, edit them there. On CPU and MPS each hands its work to
# a hand-fused twin (the autograd Functions after them) that computes the same
# thing in fewer trips through memory; at startup main() checks that the twins
# still agree with the plain code and runs the plain code when they do not, so
# an edit here always takes effect.

def norm(x):
    """RMSNorm without a learned gain: x / rms(x)."""
    return RMSNormFn.apply(x) if HAND_FUSED else F.rms_norm(x, (x.size(-1),))

def relu_squared(x):
    """The MLP's activation."""
    return ReluSquaredFn.apply(x) if HAND_FUSED else F.relu(x).square()

def softcap_cross_entropy(x, weight, targets):
    """Output head, soft-capped logits and cross-entropy: the loss of each token in nats.
    x (N, C), weight (V, C) of the output head, targets (N,)."""
    if HAND_FUSED:
        return SoftcapCrossEntropy.apply(x, weight, targets)
    logits = F.linear(x, weight).float()
    logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
    return F.cross_entropy(logits, targets, reduction="none")

def fused_twins_agree():
    """Whether the hand-fused twins give the plain code's values and gradients on a small
    random input; HAND_FUSED is left set to the answer, and one line says which code
    runs. The run's random state is untouched (the input has its own generator)."""
    global HAND_FUSED
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(64, 48, generator=g), 0.5 * torch.randn(300, 48, generator=g)
    y = torch.randint(0, 300, (64,), generator=g)
    mix = [torch.randn(64, 48, generator=g), torch.randn(64, 48, generator=g), torch.randn(64, generator=g)]
    results = []
    for fused in (True, False):
        HAND_FUSED = fused
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        outs = [norm(xs), relu_squared(xs), softcap_cross_entropy(xs, ws, y)]
        grads = torch.autograd.grad(sum((o * m).sum() for o, m in zip(outs, mix)), (xs, ws))
        results.append([t.detach() for t in outs + list(grads)])
    diff = max((a - b).abs().max().item() for a, b in zip(*results))
    HAND_FUSED = agree = diff <= 1e-4
    if agree:
        print("hand-fused loss, norm and relu^2: same as the plain code, using them", flush=True)
    else:
        print(f"hand-fused loss, norm and relu^2: differ from the plain code (max diff {diff:.2g}): "
              f"running the plain code, slower; make the same change in the twins to get the speed back",
              flush=True)
    return agree

class SoftcapCrossEntropy(torch.autograd.Function):
    """Output head + soft-cap + cross-entropy in one op, a few rows at a time.

    The plain version materializes (tokens x vocab) logits and walks over them
    about a dozen times (divide, tanh, multiply, log-softmax, and the same again
    backwards). On a CPU each walk is a trip to main memory and together they
    cost more than the head's matmul. Here each chunk of rows stays in cache
    from matmul to loss, and since the loss is the last op the gradient with
    respect to the logits is computed right away and kept for backward, which
    is then just two matmuls. The hand-fused twin of softcap_cross_entropy();
    torch.compile fuses the plain code by itself, so compiled runs use that.
    """

    @staticmethod
    def forward(ctx, x, weight, targets):
        N, V = x.size(0), weight.size(0)
        losses = torch.empty(N, dtype=torch.float32, device=x.device)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        dlogits = torch.empty(N, V, dtype=torch.float32, device=x.device) if need_grad else None
        rows = max(1, LOSS_CHUNK_ELEMENTS // V)
        for s in range(0, N, rows):
            xs, ys = x[s:s + rows], targets[s:s + rows, None]
            t = torch.tanh_((xs / LOGIT_SOFTCAP) @ weight.t())   # (n, V), logits = cap * t
            # |logits| <= cap = 15, so exp cannot overflow: no max subtraction needed
            e = torch.exp_(t * LOGIT_SOFTCAP)
            sum_e = e.sum(dim=-1, keepdim=True)
            losses[s:s + rows] = (torch.log(sum_e) - LOGIT_SOFTCAP * t.gather(1, ys)).squeeze(1)
            if need_grad:
                # d loss / d logits = (softmax - onehot(target)) * (1 - t^2)
                p = e.div_(sum_e)
                p.scatter_add_(1, ys, torch.full(ys.shape, -1.0, device=x.device))
                torch.addcmul(p, p, t.square_(), value=-1.0, out=dlogits[s:s + rows])
        ctx.save_for_backward(x, weight, dlogits)
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        x, weight, dlogits = ctx.saved_tensors
        g = grad_losses.float()[:, None]      # per-token scale (1/N for a mean)
        grad_x = (dlogits @ weight) * g
        grad_w = dlogits.t() @ (x * g)
        return grad_x, grad_w, None

class RMSNormFn(torch.autograd.Function):
    """The hand-fused twin of norm(): x / rms(x) with a backward pass of 4
    elementwise kernels (eager PyTorch runs about 9 for F.rms_norm's backward;
    on a CPU each is a trip to memory)."""

    @staticmethod
    def forward(ctx, x):
        C = x.size(-1)
        rstd = torch.rsqrt(torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(C)
                           .add_(torch.finfo(x.dtype).eps))
        y = x * rstd
        ctx.save_for_backward(y, rstd)
        return y

    @staticmethod
    def backward(ctx, g):
        y, rstd = ctx.saved_tensors
        mean_gy = (g * y).sum(dim=-1, keepdim=True).div_(y.size(-1))
        return torch.addcmul(g, y, mean_gy, value=-1.0).mul_(rstd)   # (g - y * mean(g*y)) / rms

class ReluSquaredFn(torch.autograd.Function):
    """The hand-fused twin of relu_squared(): its backward is one product, 2 * relu(x) * grad."""

    @staticmethod
    def forward(ctx, x):
        r = torch.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, g):
        (r,) = ctx.saved_tensors
        return (r + r).mul_(g)

def rotary_tables(seq_len, head_dim, base=10000.0):
    """cos and signed sin per position and channel, shaped (T, 1, 1, D) for (B, T, ..., D) inputs."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], -1)[:, None, None, :], torch.cat([sin, -sin], -1)[:, None, None, :]

def apply_rotary(x, cos, sin):
    """Rotate each pair of channels (i, i + D/2) by a position-dependent angle:
    [x1, x2] -> [x1 cos + x2 sin, x2 cos - x1 sin], written with one roll
    instead of splitting and concatenating (half the elementwise kernels)."""
    return torch.addcmul(x * cos, x.roll(x.size(-1) // 2, dims=-1), sin)

def has_value_embedding(layer, depth):
    return layer % 2 == (depth - 1) % 2   # alternate layers, always including the last

class Attention(nn.Module):
    def __init__(self, width, head_dim, window, value_embedding):
        super().__init__()
        self.n_head, self.head_dim, self.window = width // head_dim, head_dim, window
        # q, k and v weights in one (3, width, width) tensor: one matmul on the
        # forward pass, three separate matrices for Muon.
        self.qkv = nn.Parameter(torch.empty(3, width, width))
        self.proj = nn.Linear(width, width, bias=False)
        self.ve_gate = nn.Parameter(torch.full((self.n_head,), 0.5)) if value_embedding else None

    def forward(self, x, ve, cos, sin):
        B, T, C = x.shape
        qkv = F.linear(x, self.qkv.flatten(0, 1)).view(B, T, 3, self.n_head, self.head_dim)
        qk, v = qkv[:, :, :2], qkv[:, :, 2]
        if ve is not None:
            v = v + self.ve_gate.view(1, 1, -1, 1) * ve.view(B, T, self.n_head, self.head_dim)
        q, k = apply_rotary(norm(qk), cos, sin).unbind(2)   # queries and keys together: half the ops
        dtype = qkv.dtype   # bf16 under autocast: the fp32 embeddings and tables must not widen q, k, v
        y = attention(q.to(dtype), k.to(dtype), v.to(dtype), self.window)
        return self.proj(y.reshape(B, T, C))

class MLP(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, 4 * width, bias=False)
        self.proj = nn.Linear(4 * width, width, bias=False)

    def forward(self, x):
        return self.proj(relu_squared(self.fc(x)))

class Block(nn.Module):
    def __init__(self, width, head_dim, window, value_embedding):
        super().__init__()
        self.attn = Attention(width, head_dim, window, value_embedding)
        self.mlp = MLP(width)

    def forward(self, x, ve, cos, sin):
        x = x + self.attn(norm(x), ve, cos, sin)
        return x + self.mlp(norm(x))

class GPT(nn.Module):
    def __init__(self, depth=DEPTH, width=WIDTH, head_dim=HEAD_DIM, vocab_size=VOCAB_SIZE,
                 seq_len=MAX_SEQ_LEN, window_pattern=WINDOW_PATTERN, short_window=SHORT_WINDOW):
        super().__init__()
        assert width % head_dim == 0, "WIDTH must be a multiple of HEAD_DIM"
        self.depth, self.width, self.head_dim, self.vocab_size = depth, width, head_dim, vocab_size
        pattern = (window_pattern * depth)[:depth]
        self.windows = [short_window if c == "S" else seq_len for c in pattern[:-1]] + [seq_len]
        self.wte = nn.Embedding(vocab_size, width)
        self.value_embeds = nn.ModuleDict({
            str(i): nn.Embedding(vocab_size, width) for i in range(depth) if has_value_embedding(i, depth)})
        self.blocks = nn.ModuleList([
            Block(width, head_dim, self.windows[i], has_value_embedding(i, depth)) for i in range(depth)])
        self.lm_head = nn.Linear(width, vocab_size, bias=False)
        cos, sin = rotary_tables(seq_len, head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        # Embeddings ~ N(0, 1) (they are normalized right away); input matrices
        # uniform with std 1/sqrt(width); output projections zero, so every block
        # starts as the identity; a small output head gives near-uniform predictions.
        nn.init.normal_(self.wte.weight, std=1.0)
        for emb in self.value_embeds.values():
            nn.init.normal_(emb.weight, std=1.0)
        bound = 3 ** 0.5 * self.width ** -0.5
        for block in self.blocks:
            nn.init.uniform_(block.attn.qkv, -bound, bound)
            nn.init.uniform_(block.mlp.fc.weight, -bound, bound)
            nn.init.zeros_(block.attn.proj.weight)
            nn.init.zeros_(block.mlp.proj.weight)
        nn.init.normal_(self.lm_head.weight, std=0.001)

    def forward(self, idx, targets):
        """Per-token cross-entropy in nats, shape (B, T). Training takes the mean."""
        B, T = idx.shape
        cos, sin = self.cos[:T], self.sin[:T]
        x = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin)
        x = norm(x).view(B * T, -1)
        return softcap_cross_entropy(x, self.lm_head.weight, targets.reshape(-1)).view(B, T)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len=MAX_SEQ_LEN):
        """Training FLOPs per token (forward + backward = 3x forward): 6 per weight
        of every matmul (embedding lookups are free), plus attention scores and
        weighted values over the positions each query actually sees."""
        matmul = sum(p.numel() for b in self.blocks for p in b.parameters() if p.dim() >= 2)
        matmul += self.lm_head.weight.numel()
        attn = 0
        for w in self.windows:
            seen = sum(min(t + 1, w) for t in range(seq_len)) / seq_len
            attn += 12 * self.width * seen
        return 6 * matmul + attn

def build_model():
    model = GPT().to(DEVICE)
    for window in set(model.windows):
        if window < MAX_SEQ_LEN:
            window_mask(window, MAX_SEQ_LEN)
    return model

# ---------------------------------------------------------------------------
# Optimizer: Muon for the 2-D matrices of the blocks, AdamW for the rest.
# Muon keeps a momentum of the gradient and replaces it by the nearest
# orthogonal matrix (all singular values 1, computed with a few Newton-Schulz
# iterations), so every direction of a matrix moves at the same rate.

def orthogonalize(G, steps=5):
    """Approximate U V^T of G = U S V^T for a batch of matrices (..., rows, cols).
    The quintic iteration pushes every singular value towards 1 (to roughly
    0.7..1.2, which is all Muon needs) in a handful of matmuls."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if DEVICE_TYPE == "cuda" else G.float()  # bf16 on GPUs; CPUs are fast only in fp32
    wide = X.size(-2) <= X.size(-1)
    if not wide:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # singular values <= 1
    for _ in range(steps):
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)      # b*A + c*A@A
        X = torch.baddbmm(X, B, X, beta=a, alpha=1.0)    # a*X + B@X
    if not wide:
        X = X.mT
    return X.to(G.dtype)

class Muon(torch.optim.Optimizer):
    """Matrices of one shape form one group and are updated as one batch."""

    def __init__(self, params, lr, momentum, weight_decay):
        by_shape = {}
        for p in params:
            by_shape.setdefault(tuple(p.shape[-2:]), []).append(p)
        groups = [dict(params=ps) for ps in by_shape.values()]
        super().__init__(groups, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            rows, cols = params[0].shape[-2:]
            grads = torch.cat([p.grad.view(-1, rows, cols) for p in params])  # (N, rows, cols)
            state = self.state[params[0]]
            if "momentum" not in state:
                state["momentum"] = torch.zeros_like(grads)
            buf = state["momentum"]
            buf.lerp_(grads, 1 - group["momentum"])
            update = orthogonalize(grads.lerp_(buf, group["momentum"]))  # Nesterov momentum
            scale = max(1.0, rows / cols) ** 0.5                          # tall matrices: same RMS step
            lr, wd = group["lr"], group["weight_decay"]
            if wd:
                torch._foreach_mul_(params, 1 - lr * wd)
            updates = update.split([p.numel() // (rows * cols) for p in params])
            torch._foreach_add_(params, [u.view_as(p) for u, p in zip(updates, params)], alpha=-lr * scale)

def dmodel_scale(width):
    """The factor on the AdamW rates: they are tuned at width 768."""
    return (width / 768) ** -0.5

def build_optimizers(model):
    scale = dmodel_scale(model.width)
    matrices = [p for b in model.blocks for p in b.parameters() if p.dim() >= 2]
    scalars = [p for b in model.blocks for p in b.parameters() if p.dim() < 2]
    adam_groups = [
        dict(params=[model.wte.weight, *[e.weight for e in model.value_embeds.values()]],
             lr=EMBEDDING_LR * scale),
        dict(params=[model.lm_head.weight], lr=UNEMBEDDING_LR * scale),
        dict(params=scalars, lr=SCALAR_LR * scale),
    ]
    adamw = torch.optim.AdamW(adam_groups, betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0,
                              fused=DEVICE_TYPE in ("cuda", "cpu"))
    muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM[1], weight_decay=WEIGHT_DECAY)
    optimizers = [adamw, muon]
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers

def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return (progress + 1e-8) / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    frac = (1.0 - progress) / WARMDOWN_RATIO
    return max(0.0, frac) * 1.0 + (1 - max(0.0, frac)) * FINAL_LR_FRAC

def set_schedule(optimizers, progress, step):
    """Learning rates follow the fraction of the time budget used; Muon's
    momentum ramps up over the first steps."""
    lrm = lr_multiplier(progress)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lrm
    lo, hi, n = MUON_MOMENTUM
    for group in optimizers[1].param_groups:
        group["momentum"] = lo + (hi - lo) * min(1.0, step / n)
    return lrm

# ---------------------------------------------------------------------------
# What the report needs from PyTorch: the device, and its peak memory.

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' datasheets, for MFU.
# Matched as whole words in the device name, first match wins; any other GPU
# reports no MFU rather than a guess.
GPU_PEAK_FLOPS = [
    ("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12),
    ("GH200", 989e12), ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12),
    ("L4", 121e12), ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12),
]

def gpu_peak_flops(name):
    """The datasheet peak of the GPU called `name`, or None if it is not in the table."""
    return next((f for key, f in GPU_PEAK_FLOPS if re.search(rf"\b{re.escape(key)}\b", name)), None)

def device_info():
    """The machine the tensors are on (DEVICE), for the run's record."""
    if DEVICE.type == "cuda":
        props = torch.cuda.get_device_properties(DEVICE)
        info = dict(device_name=props.name, memory_gb=round(props.total_memory / 1e9, 1))
    else:
        info = dict(**prepare.host_info(), cpu_threads=torch.get_num_threads())
        if DEVICE.type == "mps":
            info["device_name"] = f"Apple {platform.machine()} (MPS)"
    peak = gpu_peak_flops(info["device_name"]) if DEVICE_TYPE == "cuda" else None
    note = "datasheet dense bf16" if peak else "peak unknown for this device: MFU not reported"
    return dict(device_type=DEVICE.type, **info, peak_flops=peak, peak_flops_note=note)

def peak_memory_mb():
    if DEVICE.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    if DEVICE.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20  # MPS keeps no peak: the allocation at the end
    return prepare.peak_rss_mb()

# ---------------------------------------------------------------------------
# Training.

def main():
    if HAND_FUSED:
        fused_twins_agree()   # the twins stand in for norm(), relu_squared() and the loss only while they agree
    tokenizer = prepare.Tokenizer.load()
    model = build_model()
    if DEVICE.type != DEVICE_TYPE:
        print(f"code: {DEVICE_TYPE} (AUTORESEARCH_DEVICE), tensors on the {DEVICE.type}: "
              f"no {DEVICE_TYPE} device here", flush=True)
    print(attention_kernels(model.windows, MAX_SEQ_LEN), flush=True)
    optimizers = build_optimizers(model)
    step_model = torch.compile(model, dynamic=False) if COMPILE else model
    tokens_per_step = DEVICE_BATCH_SIZE * MAX_SEQ_LEN * GRAD_ACCUM_STEPS
    # The harness prints and records the run (progress, summary block,
    # data/last_run.json) and aborts it on a NaN or exploding loss.
    report = prepare.RunReport(
        __file__, f"torch {torch.__version__}", device_info(),
        model=dict(depth=DEPTH, width=WIDTH, head_dim=HEAD_DIM, n_head=WIDTH // HEAD_DIM,
                   num_params=model.num_params(), vocab_size=VOCAB_SIZE, seq_len=MAX_SEQ_LEN,
                   window_pattern=WINDOW_PATTERN, flops_per_token=model.flops_per_token()),
        training=dict(compiled=COMPILE, dtype="bf16 autocast" if DEVICE_TYPE == "cuda" else "fp32",
                      device_batch_size=DEVICE_BATCH_SIZE, grad_accum_steps=GRAD_ACCUM_STEPS,
                      tokens_per_step=tokens_per_step, warmup_steps=WARMUP_STEPS,
                      dmodel_scale=dmodel_scale(WIDTH), hand_fused=HAND_FUSED),
        loss_limit=LOSS_LIMIT, start_time=START_TIME)

    loader = prepare.make_dataloader(tokenizer, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, "train")
    x, y = to_device(*next(loader))
    training_time, step = 0.0, 0
    model.train()
    while True:
        t0 = time.time()
        progress = min(training_time / TIME_BUDGET, 1.0)
        lrm = set_schedule(optimizers, progress, step)
        for _ in range(GRAD_ACCUM_STEPS):
            with autocast():
                loss = step_model(x, y).mean()
            (loss / GRAD_ACCUM_STEPS).backward()
            x, y = to_device(*next(loader))  # fetch the next batch while the device works
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        train_loss = loss.item()  # waits for the device
        dt = time.time() - t0
        counted = step >= WARMUP_STEPS   # the first steps compile: not counted in the budget
        if counted:
            training_time += dt
        report.step(step, dt, train_loss, counted, training_time, lrm)
        step += 1
        if counted and training_time >= TIME_BUDGET:
            break

    # Evaluation: prepare.evaluate_bpb feeds fixed validation batches to our
    # per-token loss and turns nats into bits per byte.
    train_peak_mb = peak_memory_mb()   # of training; evaluation allocates its own
    model.eval()
    eval_model = step_model if COMPILE else model   # compiled kernels on GPU; the same shapes as training

    def per_token_loss(xv, yv):
        xv, yv = to_device(xv, yv)
        with torch.no_grad(), autocast():
            return eval_model(xv, yv).float().cpu().numpy()

    val_bpb = prepare.evaluate_bpb(per_token_loss, DEVICE_BATCH_SIZE)
    report.finish(val_bpb, training_seconds=training_time, train_peak_mb=train_peak_mb,
                  peak_memory_mb=peak_memory_mb())


if __name__ == "__main__":
    main()
