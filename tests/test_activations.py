"""studio.activations: what a step keeps for the backward changes memory, never the gradients."""
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import GPT2Config, GPT2LMHeadModel

import studio
from studio import activations
from studio.training import lm_loss, make_optimizer, resolve_precision
from studio.presets import TrainSettings


def tiny(dropout: float) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=97, resid_pdrop=dropout,
                     embd_pdrop=dropout, attn_pdrop=dropout, activation_function="gelu_pytorch_tanh")
    return GPT2LMHeadModel(cfg).train()


def trained(mode: str, dropout: float, steps: int = 3) -> dict:
    model = tiny(dropout)
    activations.apply(model, mode)
    opt = make_optimizer(model, TrainSettings(), torch.device("cpu"))
    ctx = resolve_precision(torch.device("cpu"), "fp32")
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(2)  # dropout's masks: the recomputation must replay the same ones
    for _ in range(steps):
        x = torch.randint(0, 97, (3, 17), generator=g)
        lm_loss(model, x[:, :-1].contiguous(), x[:, 1:].contiguous(), ctx.context()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("mode", ["selective", "full"])
def test_recomputing_leaves_the_weights_bit_for_bit_equal(mode, dropout):
    kept, redone = trained("keep", dropout), trained(mode, dropout)
    assert all(torch.equal(kept[k], redone[k]) for k in kept)
    assert any(not torch.equal(kept[k], tiny(dropout).state_dict()[k]) for k in kept)  # it did train


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] = self.ops.get(str(func), 0) + 1
        return func(*args, **(kwargs or {}))


def op_counts(mode: str) -> dict[str, int]:
    model = tiny(0.0)
    activations.apply(model, mode)
    x = torch.randint(0, 97, (2, 16))
    with _Count() as seen:
        lm_loss(model, x, x, resolve_precision(torch.device("cpu"), "fp32").context()).backward()
    return seen.ops


def test_selective_redoes_the_cheap_work_and_none_of_the_matmuls():
    keep, selective, full = (op_counts(m) for m in activations.MODES)
    norm, mm = "aten.native_layer_norm.default", "aten.addmm.default"
    assert selective[norm] == keep[norm] + 2 * 2  # two LayerNorms per block, redone in each of 2 blocks
    assert selective[mm] == keep[mm]  # matrix multiplies are kept, not redone
    assert full[mm] > keep[mm] and full[norm] == selective[norm]  # checkpointing redoes them too


def test_the_studios_rule_and_bad_modes():
    assert activations.default_mode(128) == "keep" and activations.default_mode(768) == "selective"
    assert activations.default_mode(128, checkpointing=True) == "full"
    with pytest.raises(ValueError, match=r"activation mode must be one of \['keep', 'selective', 'full'\]"):
        activations.apply(tiny(0.0), "some")


@pytest.mark.skipif(not studio.training_env({}).get("GLIBC_TUNABLES"), reason="glibc only")
def test_a_training_process_gets_the_allocator_settings_and_the_users_win():
    env = studio.training_env({"OMP_WAIT_POLICY": "PASSIVE"})
    assert env["MALLOC_MMAP_THRESHOLD_"] == str(2**20) and env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert "OMP_WAIT_POLICY" not in env or env["OMP_WAIT_POLICY"] == os.environ.get("OMP_WAIT_POLICY")
    mine = studio.training_env({"MALLOC_MMAP_THRESHOLD_": "65536", "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"})
    assert mine["MALLOC_MMAP_THRESHOLD_"] == "65536"
    assert mine["GLIBC_TUNABLES"] == "glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=1"
    assert studio.training_env(mine) == mine  # settled: a restarted process does not restart again
