"""studio.activations: what a step keeps for the backward changes memory, never the gradients."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import GPT2Config, GPT2LMHeadModel

from studio import activations, lora
from studio.lora import LoraSettings
from studio.presets import TrainSettings
from studio.devices import precision
from studio.head import lm_loss
from studio.run import make_optimizer


@pytest.fixture(autouse=True)
def _tiny_counts_as_big(monkeypatch):
    # the tiny model's matmuls (inner 32) count as expensive, LoRA's B (inner = rank 4) as cheap
    monkeypatch.setattr(activations, "CHEAP_INNER_MAX", 8)


def tiny(dropout: float = 0.0, adapters: bool | str = False) -> torch.nn.Module:
    """adapters: True (LoRA on an fp32 base) or "narrow" (the base stored in bf16, `lora.store_frozen`)."""
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=97, resid_pdrop=dropout,
                     embd_pdrop=dropout, attn_pdrop=dropout, activation_function="gelu_pytorch_tanh")
    model = GPT2LMHeadModel(cfg)
    if adapters:
        model = lora.wrap(model, LoraSettings(r=4))
        if adapters == "narrow":
            lora.store_frozen(model, None, "cpu")
        for name, p in model.named_parameters():  # B starts at zero: make the adapters matter from step 1
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
    return model.train()


def trained(mode: str, dropout: float, adapters: bool | str = False, steps: int = 3) -> dict:
    model = tiny(dropout, adapters)
    activations.apply(model, mode, frozen=bool(adapters))
    opt = make_optimizer(model, TrainSettings(), torch.device("cpu"))
    ctx = precision(torch.device("cpu"), "fp32")
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(2)  # dropout's masks: the recomputation must replay the same ones
    for _ in range(steps):
        x = torch.randint(0, 97, (3, 17), generator=g)
        lm_loss(model, x[:, :-1].contiguous(), x[:, 1:].contiguous(), ctx.context()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("dropout, adapters", [(0.0, False), (0.1, False), (0.0, True), (0.0, "narrow")])
@pytest.mark.parametrize("mode", ["selective", "full"])
def test_recomputing_leaves_the_weights_bit_for_bit_equal(mode, dropout, adapters):
    kept, redone = trained("keep", dropout, adapters), trained(mode, dropout, adapters)
    assert all(torch.equal(kept[k], redone[k]) for k in kept)
    start = tiny(dropout, adapters).state_dict()
    assert any(not torch.equal(kept[k], start[k]) for k in kept)  # it did train


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        keys = [str(func)]
        if func is torch.ops.aten.addmm.default:  # also by the inner dimension
            keys.append(f"addmm inner={args[1].shape[-1]}")
        for key in keys:
            self.ops[key] = self.ops.get(key, 0) + 1
        return func(*args, **(kwargs or {}))


def op_counts(mode: str, adapters: bool | str = False) -> dict[str, int]:
    model = tiny(adapters=adapters)
    activations.apply(model, mode, frozen=bool(adapters))
    x = torch.randint(0, 97, (2, 16))
    with _Count() as seen:
        lm_loss(model, x, x, precision(torch.device("cpu"), "fp32").context()).backward()
    return seen.ops


def test_selective_redoes_the_cheap_work_and_none_of_the_matmuls():
    keep, selective, full = (op_counts(m) for m in activations.MODES)
    norm, mm = "aten.native_layer_norm.default", "aten.addmm.default"
    assert selective[norm] == keep[norm] + 2 * 2  # two LayerNorms per block, redone in each of 2 blocks
    assert selective[mm] == keep[mm]  # matrix multiplies are kept, not redone
    assert full[mm] > keep[mm] and full[norm] == selective[norm]  # checkpointing redoes them too


@pytest.mark.parametrize("adapters", [True, "narrow"])
def test_selective_under_lora_redoes_the_rank_wide_matmul_and_the_attention_projection(adapters):
    keep, selective = op_counts("keep", adapters), op_counts("selective", adapters)
    def own(ops: dict) -> int:  # the frozen layers': inner = the width, or 4 x for the MLP's c_proj
        return ops["addmm inner=32"] + ops["addmm inner=128"]

    lora_b = "addmm inner=4"
    # 4 per block, kept or never reached again but the attention's output projection (32 -> 32),
    # redone in each block (`activations.dropped_square`)
    assert own(keep) == 4 * 2 and own(selective) == own(keep) + 2
    # B's product added to the layer's output (inner = the rank) is redone in each block but for
    # the MLP's last, where the recompute stops (`lora._Down` saves before the layer's product)
    assert keep[lora_b] == 4 * 2 and selective[lora_b] == keep[lora_b] + 3 * 2


def test_selective_drops_the_mlps_last_output_and_under_lora_the_attentions():
    from torch.utils.checkpoint import CheckpointPolicy

    assert activations.dropped_inner(tiny()) == activations.dropped_inner(tiny(adapters=True)) == 128  # 4 x 32
    as_wide = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_inner=32, vocab_size=97))
    assert activations.dropped_inner(as_wide) == 0  # its products are told apart by width: keep them all
    addmm, bias = torch.ops.aten.addmm.default, torch.zeros(32)
    def policy(inner: int, out: int = 32, square: int = 0):
        return activations._keep_expensive(128, square, None, addmm, bias, torch.zeros(4, inner),
                                           torch.zeros(inner, out))

    assert policy(128) == CheckpointPolicy.PREFER_RECOMPUTE  # its output only feeds the residual add
    assert policy(32) == CheckpointPolicy.MUST_SAVE  # the width-deep products are kept
    # under LoRA (`activations.dropped_square`) the attention's projection, width to width, is redone
    assert activations.dropped_square(tiny(), frozen=True) == 32 and activations.dropped_square(tiny(), False) == 0
    assert policy(32, square=32) == CheckpointPolicy.PREFER_RECOMPUTE
    assert policy(32, out=96, square=32) == policy(32, out=128, square=32) == CheckpointPolicy.MUST_SAVE
    # the recompute stops before redoing the dropped product: test_selective_redoes_the_cheap_work_...
    # counts every product of the backward


def test_the_studios_rule_and_bad_modes():
    assert activations.default_mode(128) == "keep" and activations.default_mode(768) == "selective"
    assert activations.default_mode(128, checkpointing=True) == "full"
    with pytest.raises(ValueError, match=r"activation mode must be one of \['keep', 'selective', 'full'\]"):
        activations.apply(tiny(), "some")
