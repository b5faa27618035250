"""Python run from the repository root: the top-level ``kernels/`` folder (the Triton kernels' source, installed as
``histream_engine.kernels``) must not shadow PyPI's ``kernels`` package, which transformers imports. ``python -c``,
``python -m`` and ``torchrun -m`` put the working folder first on ``sys.path``; each runs here as a subprocess with the
repository root as its working folder, the way a user runs them from a checkout."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def run_from_root(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as a user's shell: nothing added to the path
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("folder, module", [("kernels", "attention_core"), ("bench", "suite")])
def test_the_mapped_in_folders_are_not_regular_packages(folder, module):
    """A regular package at the root would shadow an installed one of its name (PyPI's kernels, for transformers)."""
    assert (REPO / folder / f"{module}.py").is_file()
    assert not (REPO / folder / "__init__.py").exists(), f"{folder}/__init__.py makes the folder shadow an installed {folder}"
    proc = run_from_root(sys.executable, "-c", f"import histream_engine.{folder}.{module} as m; print(m.__file__)")
    assert proc.returncode == 0 and Path(proc.stdout.strip()) == REPO / folder / f"{module}.py", proc.stdout + proc.stderr


def test_transformers_umt5_imports_beside_the_package_from_the_root():
    pytest.importorskip("transformers")
    proc = run_from_root(sys.executable, "-c", "import histream_engine, histream_engine.kernels.rope_prepass as k; "
                         "from transformers import UMT5EncoderModel; import kernels; "
                         "print(k.__file__); print(kernels.__file__)")
    assert proc.returncode == 0, proc.stderr
    ours, theirs = proc.stdout.split()
    assert Path(ours).parent.name == "kernels" and "site-packages" in theirs, proc.stdout


def test_the_package_runs_as_a_module_from_the_root():
    proc = run_from_root(sys.executable, "-m", "histream_engine", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "generate" in proc.stdout and "serve" in proc.stdout


@pytest.fixture
def text_model_dir(tmp_path):
    """A tiny Wan2.1-layout folder with a (tiny, random) UMT5 encoder and tokenizer, so ``generate --prompt`` runs
    transformers' UMT5 for real."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    from histream_engine import WanDiT, save_dit
    from histream_engine.model.vae import VAEConfig, WanVAE
    from histream_engine.vae_checkpoint import save_vae

    torch.manual_seed(0)
    dit = WanDiT("tiny").eval()
    save_dit(dit, tmp_path / "model", format="wan")
    save_vae(WanVAE(VAEConfig(dim=16, num_res_blocks=0)).eval(), tmp_path / "model" / "vae", format="diffusers")
    config = transformers.UMT5Config(vocab_size=64, d_model=dit.config.text_dim, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    transformers.UMT5EncoderModel(config).eval().save_pretrained(tmp_path / "model" / "text_encoder")
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", "a", "cat"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(tmp_path / "model" / "tokenizer")
    return tmp_path / "model"


@pytest.mark.long  # torchrun, an agent and two ranks importing torch: .ci/run runs it after the default run
def test_torchrun_generates_from_a_text_prompt_from_the_root(tmp_path, text_model_dir):
    """How docs/parallel.md starts a sequence-parallel run (one rank here), with a text prompt: transformers' UMT5
    is imported and run inside ``-m histream_engine``."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    out = tmp_path / "cat.mp4"
    proc = run_from_root(torchrun, "--standalone", "--nproc-per-node", "1", "-m", "histream_engine", "generate",
                         "--model-dir", str(text_model_dir), "--prompt", "a cat", "--frames", "9", "--height", "64",
                         "--width", "64", "--dtype", "float32", "--parallel", "ulysses", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.stat().st_size > 0 and "wrote" in proc.stdout
