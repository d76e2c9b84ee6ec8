"""Bad input at run time: model specs, config files, outputs that cannot be written, unexpected errors and signals.

Each case stops with one line (the file or key, what is wrong, what to do), its exit status, and leaves no output
and no temporary behind. The signal cases interrupt a real ``brainatt preprocess`` in a subprocess mid-work.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from tqdm import tqdm

import brainatt.cli as cli
from brainatt.cli import main
from brainatt.contracts.stimuli import stimuli_writer
from brainatt.io import BrainattError, atomic_path, stale_temporaries
from brainatt.models import loading
from brainatt.models.loading import _open_clip_pretrained, load_backbone
from brainatt.models.spec import SHIPPED_KIT, ModelSpec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow/lib"))
from config_check import ConfigError, check_schema, check_syntax, merge  # noqa: E402

SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
KIT_CLIP = {"name": "kit:clip", "source": "open_clip"}


def _temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp")) if folder.is_dir() else []


def _one_line(capsys: pytest.CaptureFixture, code: int, expected: int, out: Path) -> str:
    """The run's single error line (the last on stderr, nothing after it); nothing left at or beside ``out``."""
    err = capsys.readouterr().err.rstrip("\n").split("\n")
    assert code == expected, err
    lines = [line for line in err if line.startswith("brainatt: error:")]
    assert len(lines) == 1 and err[-1] == lines[0], err
    assert not any("Traceback" in line for line in err), err
    assert not out.exists() or out.is_dir()
    assert not _temporaries(out.parent), "temporary left behind"
    return lines[0]


def test_closing_line_is_a_line_of_its_own_after_an_open_progress_bar(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def stops_inside_a_bar(args: object) -> None:
        bar = tqdm(total=3, desc="work")  # open while the error unwinds: the traceback keeps this frame alive
        bar.update()
        raise BrainattError("stopped inside the loop")

    monkeypatch.setattr(cli, "cmd_synthesize", stops_inside_a_bar)
    assert main(["synthesize", "--out", "unused"]) == 2
    err = capsys.readouterr().err.rstrip("\n").split("\n")
    assert err[-1] == "brainatt: error: stopped inside the loop", err


def test_world_version_mismatch_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "nsd-synth"
    line = _one_line(capsys, main(["synthesize", "--world-version", "0", "--out", str(out)]), 2, out)
    assert "world version 0" in line and "pip install -e ." in line, line


# ---------------------------------------------------------------------------------------------- model specs
@pytest.fixture(scope="module")
def stimuli(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stimuli") / "images.h5"
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    with stimuli_writer(path, {}, np.array([1, 2, 3]), images.shape[1:]) as w:
        w.images[:] = images
    return path


@pytest.fixture
def kit(tmp_path: Path) -> Path:
    """A private copy of the shipped kit, free to damage."""
    return Path(shutil.copytree(SHIPPED_KIT, tmp_path / "kit"))


def _features(stimuli: Path, out: Path, spec: dict, *extra: str) -> list[str]:
    return ["features", "--stimuli", str(stimuli), "--model", json.dumps(spec), "--out", str(out), *extra]


SPEC_CASES = {
    "key typo": ({**KIT_CLIP, "layer": [-1]}, ["unknown key 'layer'", "did you mean 'layers'"]),
    "layer past the end": ({**KIT_CLIP, "layers": [99]}, ["layer 99 is out of range", "6 blocks", "0 … 5"]),
    "negative layer past the start": ({**KIT_CLIP, "layers": [-7]}, ["layer -7 is out of range", "-1 … -6"]),
    "same block twice": ({**KIT_CLIP, "layers": [-1, 5]}, ["names a block twice"]),
    "layers not integers": ({**KIT_CLIP, "layers": ["last"]}, ["models.backbone.layers", "not a list"]),
    "source typo": ({**KIT_CLIP, "source": "open-clip"}, ["'open-clip' is not a model source", "'open_clip'"]),
    "no name": ({"source": "open_clip"}, ["models.backbone.name: missing"]),
    "architecture without pretrained": (
        {"name": "ViT-B-16", "source": "open_clip"},
        ["pretrained: missing for ViT-B-16", "random weights", "`pretrained: none`"],
    ),
    "model name typo": (
        {"name": "ViT-B-61", "source": "open_clip", "pretrained": "openai"},
        ["'ViT-B-61' is neither an open_clip model", "did you mean 'ViT-B-16'"],
    ),
    "pretrained tag typo": (
        {"name": "ViT-B-16", "source": "open_clip", "pretrained": "laion2b_s34b_b89k"},
        ["'laion2b_s34b_b89k' is neither a pretrained tag", "did you mean 'laion2b_s34b_b88k'"],
    ),
}


@pytest.mark.parametrize("case", list(SPEC_CASES))
def test_bad_model_spec(case: str, stimuli: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec, expected = SPEC_CASES[case]
    out = tmp_path / "features/backbone.h5"
    line = _one_line(capsys, main(_features(stimuli, out, spec)), 2, out)
    assert all(s in line for s in expected), line
    assert "network" not in line and "offline" not in line, line  # a mistake is not blamed on the network


def _damage_kit(kit: Path, damage: str) -> Path:
    """Damage the kit copy; return the file the error must name."""
    manifest = kit / "manifest.json"
    if damage == "changed file":
        path = kit / "clip/open_clip_config.json"
        path.write_text(path.read_text().replace('"embed_dim": 128', '"embed_dim": 127'))
        return path
    if damage == "missing file":
        path = kit / "clip/open_clip_model.safetensors"
        path.unlink()
        return path
    if damage == "truncated manifest":
        manifest.write_bytes(manifest.read_bytes()[:300])
    elif damage == "manifest without hashes":
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "files": {}}))
    else:
        manifest.unlink()
    return manifest


KIT_DAMAGE = {
    "changed file": "changed since training",
    "missing file": "kit file missing",
    "truncated manifest": "truncated or not JSON",
    "manifest without hashes": "lists no file hashes",
    "no manifest": "no kit manifest",
}


@pytest.mark.parametrize("damage", list(KIT_DAMAGE))
def test_damaged_kit_is_refused(
    damage: str, kit: Path, stimuli: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = _damage_kit(kit, damage)
    out = tmp_path / "features/backbone.h5"
    line = _one_line(capsys, main(_features(stimuli, out, KIT_CLIP, "--kit", str(kit))), 2, out)
    assert str(path) in line and KIT_DAMAGE[damage] in line and "rerun the kit rule" in line, line


def test_kit_hashes_once_per_file(kit: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every load checks the kit, but a file unchanged since the last check is not read again."""
    import brainatt.models.spec as spec_module
    from brainatt.io import file_hash

    calls: list[Path] = []
    monkeypatch.setattr(spec_module, "_HASHES", {})
    monkeypatch.setattr(spec_module, "file_hash", lambda p: calls.append(p) or file_hash(p))
    spec_module.resolve_kit("kit:clip", kit)
    first = len(calls)
    spec_module.resolve_kit("kit:clip", kit)
    assert first == 4 and len(calls) == first  # the clip part's files, hashed once
    path = kit / "clip/tokenizer_config.json"
    path.write_text(path.read_text() + " ")  # changed: read again, and refused
    with pytest.raises(BrainattError, match="changed since training"):
        spec_module.resolve_kit("kit:clip", kit)


def test_offline_is_decided_once_and_named(
    stimuli: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub model missing from the cache while the hub is out of reach: one probe per process, one line."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    probes: list[tuple] = []

    def unreachable(address: tuple, timeout: float) -> None:
        probes.append(address)
        raise OSError("unreachable")

    monkeypatch.setattr(loading.socket, "create_connection", unreachable)
    loading.hub_offline.cache_clear()
    try:
        for name in ("facebook/dinov2-base", "facebook/dinov2-small"):
            out = tmp_path / f"features/{name.replace('/', '-')}.h5"
            line = _one_line(capsys, main(_features(stimuli, out, {"name": name, "source": "dinov2"})), 2, out)
            assert name in line and "not in the local cache" in line and "(offline)" in line, line
    finally:
        loading.hub_offline.cache_clear()
    assert len(probes) == 1


def test_pretrained_none_asks_for_random_weights() -> None:
    assert _open_clip_pretrained(ModelSpec(role="clip", name="ViT-B-16", pretrained="none"), "ViT-B-16") is None


def _tiny_dinov2(folder: Path, registers: int) -> Path:
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    kw = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32)
    torch.manual_seed(0)
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**kw, patch_size=8, num_register_tokens=registers))
    else:
        model = Dinov2Model(Dinov2Config(**kw, patch_size=8))
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("registers", [0, 4])
def test_dinov2_keeps_its_register_tokens(tmp_path: Path, registers: int) -> None:
    folder = _tiny_dinov2(tmp_path / "dinov2", registers)
    spec = ModelSpec(role="backbone", name=str(folder), source="dinov2", layers=(0, -1))
    backbone = load_backbone(spec)
    if registers:
        saved = type(backbone.inner).from_pretrained(folder).embeddings.register_tokens
        assert torch.equal(backbone.inner.embeddings.register_tokens, saved)
    out = backbone(torch.rand(2, 3, 32, 32))
    assert out[0].shape == out[-1].shape == (2, 4, 4, 32)  # patches only: CLS and registers dropped


def test_dinov2_checkpoint_of_another_architecture(tmp_path: Path) -> None:
    """A registers checkpoint labelled plain DINOv2 would lose its registers: refused."""
    folder = _tiny_dinov2(tmp_path / "dinov2", 4)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "dinov2"}))
    with pytest.raises(BrainattError, match="does not match its architecture"):
        load_backbone(ModelSpec(role="backbone", name=str(folder), source="dinov2"))


# --------------------------------------------------------------------------------------------------- config
BASE = {"dataset": {"root": "results/nsd-synth", "subjects": ["subj01"]}}


def _config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("dataset:\n  root: results/nsd-synth\n  subjects: [subj01]\n" + text)
    return path


SYNTAX_CASES = {
    "unclosed list": ("models:\n  backbone: {name: 'kit:clip', layers: [-3, -1}\n", ":5:"),
    "tab indentation": ("kit:\n\tseed: 1\n", ":5:"),
    "bad indentation": ("kit:\n  seed: 1\n   n_images: 20\n", ":6:"),
}


@pytest.mark.parametrize("case", list(SYNTAX_CASES))
def test_yaml_syntax_error_names_the_line(case: str, tmp_path: Path) -> None:
    text, line = SYNTAX_CASES[case]
    path = _config_file(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        check_syntax(path)
    message = str(e.value)
    assert message.startswith(f"{path}{line}") and "YAML syntax error" in message and "\n" not in message


SCHEMA_CASES = {
    "negative width": ("kit:\n  clip:\n    vision_width: -8\n", ":6:", "kit.clip.vision_width: -8 is less than"),
    "negative learning rate": ("kit:\n  captioner: {lr: -0.001}\n", ":5:", "kit.captioner.lr: -0.001"),
    "zero captioner width": ("kit:\n  captioner: {width: 0}\n", ":5:", "kit.captioner.width: 0 is less than"),
    "model key typo": (
        "models:\n  backbone:\n    name: kit:clip\n    layer: [-1]\n",
        ":7:",
        "models.backbone: unknown key 'layer' (did you mean 'layers'?)",
    ),
    "section typo": ("encodng:\n  seeds: [0]\n", ":4:", "unknown key 'encodng' (did you mean 'encoding'?)"),
    "wrong type": ("encoding:\n  seeds: 0\n", ":5:", "encoding.seeds: 0 is not of type 'array'"),
}


@pytest.mark.parametrize("case", list(SCHEMA_CASES))
def test_schema_error_names_the_file_and_line(case: str, tmp_path: Path) -> None:
    text, line, expected = SCHEMA_CASES[case]
    path = _config_file(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        check_schema(check_syntax(path), SCHEMA, [path])
    message = str(e.value)
    assert message.startswith(f"{path}{line}") and expected in message and "\n" not in message, message


def test_schema_error_is_located_in_the_file_that_sets_it(tmp_path: Path) -> None:
    base = _config_file(tmp_path, "kit:\n  seed: 1\n")
    override = tmp_path / "override.yaml"
    override.write_text("kit:\n  clip:\n    text_width: -32\n")
    config = merge(check_syntax(base), check_syntax(override))
    with pytest.raises(ConfigError, match=f"^{override}:3: kit.clip.text_width"):
        check_schema(config, SCHEMA, [base, override])


def test_snakemake_reports_a_schema_error_in_one_line(tmp_path: Path) -> None:
    path = _config_file(tmp_path, "kit:\n  clip: {vision_width: -8}\n")
    run = subprocess.run(
        [shutil.which("snakemake") or "snakemake", "-n", "--configfile", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1
    assert f"{path}:5: kit.clip.vision_width: -8 is less than the minimum of 32" in run.stdout + run.stderr


def test_snakemake_reports_a_syntax_error_in_the_embedded_config_with_its_line(tmp_path: Path) -> None:
    """The workflow copied with a broken config/config.yaml: Snakemake's own message would have no line."""
    for part in ("Snakefile", "workflow", "config"):
        (shutil.copytree if (ROOT / part).is_dir() else shutil.copy)(ROOT / part, tmp_path / part)
    config = tmp_path / "config/config.yaml"
    lines = config.read_text().splitlines()
    broken = next(i for i, line in enumerate(lines) if line.startswith("  subjects: ["))
    lines[broken] = "  subjects: [subj01"  # unclosed: the parser notices on the next line
    config.write_text("\n".join(lines) + "\n")
    run = subprocess.run(
        [shutil.which("snakemake") or "snakemake", "-n"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 1
    found = re.search(r"config/config\.yaml:(\d+):\d+: YAML syntax error", run.stdout + run.stderr)
    assert found and int(found.group(1)) in (broken + 1, broken + 2), run.stderr


# ---------------------------------------------------------------------------------- the top-level handler
def test_unexpected_error_is_one_line_and_a_log(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(args: object) -> None:
        raise ValueError("something nobody checked\nover two lines")

    monkeypatch.setenv("BRAINATT_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setattr(cli, "cmd_prep_summary", broken)
    out = tmp_path / "prep.tsv"
    argv = ["prep-summary", "--responses", "r.h5", "--table", str(out), "--figure", str(tmp_path / "f.png")]
    line = _one_line(capsys, main(argv), 1, out)
    logs = list((tmp_path / "logs").glob("brainatt-prep-summary-*.log"))
    assert len(logs) == 1 and str(logs[0]) in line
    assert "unexpected ValueError in `brainatt prep-summary`: something nobody checked over two lines" in line
    text = logs[0].read_text()
    assert "Traceback" in text and "raise ValueError" in text and "prep-summary" in text


def test_a_signal_swallowed_by_a_finalizer_is_delivered_again() -> None:
    """Ctrl-C landing in a cleanup callback (h5py runs many) is printed as "Exception ignored" and lost without
    the CLI's hook; with it the interrupt reaches ordinary code, every time."""

    class Resource:
        pass

    def cleanup() -> None:
        raise KeyboardInterrupt  # as if the signal arrived while the callback ran

    delivered = 0
    with cli._signals_raise():
        for _ in range(20):
            try:
                r = Resource()
                weakref.finalize(r, cleanup)
                del r
                for _ in range(1000):
                    time.sleep(0.01)
            except KeyboardInterrupt:
                delivered += 1
    assert delivered == 20


# ----------------------------------------------------------------------------------------- output paths
@pytest.fixture
def preprocess(tiny_world: Path) -> list[str]:
    return ["preprocess", "--root", str(tiny_world), "--subject", "subj01", "--atlases", "nsdgeneral"]


def _blocked_by_file(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "prep").write_text("a file where the folder goes")
    return tmp_path / "prep/subj01/responses.h5", f"{tmp_path / 'prep'}: is a file"


def _directory(tmp_path: Path) -> tuple[Path, str]:
    out = tmp_path / "prep/responses.h5"
    out.mkdir(parents=True)
    return out, f"{out}: the output path is a folder"


def _read_only_filesystem(tmp_path: Path) -> tuple[Path, str]:
    return Path("/sys/brainatt-test/responses.h5"), "/sys/brainatt-test: cannot create the output folder"


def _unwritable_folder(tmp_path: Path) -> tuple[Path, str]:
    if os.geteuid() == 0:
        pytest.skip("root writes in any folder")
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o555)
    return folder / "responses.h5", f"{folder}: the output folder is not writable"


OUTPUT_CASES = {
    "output folder is a file": _blocked_by_file,
    "output path is a folder": _directory,
    "folder on a read-only file system": _read_only_filesystem,
    "unwritable folder": _unwritable_folder,
}


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
def test_output_that_cannot_be_written(
    case: str, preprocess: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out, expected = OUTPUT_CASES[case](tmp_path)
    line = _one_line(capsys, main([*preprocess, "--out", str(out)]), 2, out)
    assert expected in line and ("choose another output path" in line or "move it away" in line), line
    if out.is_dir():
        assert not list(out.iterdir())


def test_rerun_removes_stale_temporaries(preprocess: list[str], tmp_path: Path) -> None:
    out = tmp_path / "prep/responses.h5"
    out.parent.mkdir()
    stale = [out.parent / ".responses.h5.k1ll3d00.tmp", out.parent / ".responses.h5.oomk1ll_.tmp"]
    stale[0].write_bytes(b"half an hdf5 file")
    stale[1].mkdir()
    other = out.parent / ".responses.h5.bak.abcd1234.tmp"  # another output's temporary: kept
    other.write_bytes(b"")
    assert stale_temporaries(out) == sorted(stale)
    assert main([*preprocess, "--out", str(out)]) == 0
    assert out.is_file() and not any(p.exists() for p in stale) and other.exists()


@pytest.mark.parametrize("umask", [0o022, 0o007, 0o077])
def test_outputs_take_the_umask_modes(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "table.tsv") as tmp:
            tmp.write_text("x\n")
        with atomic_path(tmp_path / "run", directory=True) as tmp:
            (tmp / "a.txt").write_text("a")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "table.tsv").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o777 & ~umask


# ---------------------------------------------------------------------------------------------- signals
SLOW_PREPROCESS = """
import sys, time
import brainatt.prep.responses as responses
from brainatt.cli import main
read = responses.read_session
def slow(*args, **kwargs):
    time.sleep(0.25)  # sessions take long enough to be interrupted mid-work
    return read(*args, **kwargs)
responses.read_session = slow
sys.exit(main(sys.argv[1:]))
"""


def _interrupt(preprocess: list[str], out: Path, signum: int, after: float) -> subprocess.CompletedProcess:
    """Run ``brainatt preprocess`` in a subprocess; once its temporary exists, wait ``after`` s and signal it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_PREPROCESS, *preprocess, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not _temporaries(out.parent) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _temporaries(out.parent), "the output was never being written"
    time.sleep(after)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("after", [0.0, 0.4])
@pytest.mark.parametrize(
    ("signum", "code", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_signal_stops_the_run_and_removes_its_temporary(
    preprocess: list[str], tmp_path: Path, signum: int, code: int, word: str, after: float
) -> None:
    out = tmp_path / "prep/responses.h5"
    run = _interrupt(preprocess, out, signum, after)
    err = run.stderr.rstrip("\n").split("\n")
    assert run.returncode == code, err
    assert err[-1].startswith(f"brainatt: {word}") and "Traceback" not in run.stderr, err
    assert "Exception ignored" not in run.stderr, err
    assert not out.exists() and not _temporaries(out.parent)


def test_sigkill_leaves_a_temporary_that_the_rerun_removes(preprocess: list[str], tmp_path: Path) -> None:
    out = tmp_path / "prep/responses.h5"
    run = _interrupt(preprocess, out, signal.SIGKILL, 0.1)
    assert run.returncode == -signal.SIGKILL
    left = _temporaries(out.parent)
    assert left and not out.exists()  # nothing can clean up after SIGKILL …
    assert main([*preprocess, "--out", str(out)]) == 0
    assert out.is_file() and not any(p.exists() for p in left)  # … but the next run of the job does
