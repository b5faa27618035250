"""The manifest of an export folder: which graph file holds which signature, written by ``histream export`` and read
by the graph runners, tied to the package version and the weights that were baked in."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import CheckpointError
from ..provenance import git_commit, package_version
from .signature import Signature

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of every parameter's name, shape, dtype and a few statistics: graphs bake the weights in, so a
    manifest records whose they are and the runtime refuses another model's."""
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        flat = p.detach().flatten()
        step = max(1, flat.numel() // 4096)  # the same elements on any device: raw bytes, no reduction order
        sample = flat[::step].contiguous().cpu().view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8)
        h.update(repr((name, tuple(p.shape), str(p.dtype))).encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class Manifest:
    root: Path
    package_version: str
    fingerprint: str
    config: dict
    graphs: dict[Signature, dict]  # signature -> {"file", "inputs", "outputs", ...}
    fp8: bool = False  # Q/DQ around the blocks' linear layers (graphs.fp8)

    def entry(self, sig: Signature) -> dict:
        if sig not in self.graphs:
            have = "\n  ".join(s.name for s in sorted(self.graphs)) or "(none)"
            raise ValueError(f"no exported graph for signature {sig.name} ({sig}) in {self.root}; it has:\n  {have}\n"
                             "export the schedule and size you run: histream export --schedule ... --height ... --width ...")
        return self.graphs[sig]

    def check_covers(self, sigs: list[Signature]) -> None:
        for sig in sigs:
            self.entry(sig)


def write_manifest(root: Path, dit, schedule: str, entries: list[tuple[Signature, dict]], extra: dict) -> Path:
    record = {
        "format": MANIFEST_FORMAT,
        "package_version": package_version(),
        "git_commit": git_commit(),
        "weights_fingerprint": weights_fingerprint(dit),
        "config": dit.config.to_wan_json(),
        "schedule": schedule,
        **extra,
        "graphs": [{"signature": sig.to_json(), **entry} for sig, entry in entries],
    }
    path = root / MANIFEST
    path.write_text(json.dumps(record, indent=2))
    return path


def read_record(root: Path, name: str, writer: str, parse):
    """``parse(json)`` of the record ``root/name`` that ``writer`` writes; a missing or malformed one is a CheckpointError."""
    path = root / name
    if not path.is_file():
        raise CheckpointError(f"{root} has no {name}: point engine_dir at a folder written by {writer}")
    try:
        return parse(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a record written by {writer} ({type(exc).__name__}: {exc})") from exc


def read_manifest(root: str | Path, dit=None) -> Manifest:
    """The manifest of an export folder, refusing one from another package version or (given ``dit``) other weights."""
    root = Path(root)
    path = root / MANIFEST
    record, graphs = read_record(root, MANIFEST, "histream export",
                                 lambda r: (r, {Signature.from_json(g["signature"]): g for g in r["graphs"]}))
    if record.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"{path} has manifest format {record.get('format')}, this package reads {MANIFEST_FORMAT}")
    if record.get("package_version") != (version := package_version()):
        raise CheckpointError(f"{path} was written by histream_engine {record.get('package_version')}, this is {version}: "
                              "graphs are tied to the package that exported them; export again")
    if dit is not None and record.get("weights_fingerprint") != weights_fingerprint(dit):
        raise CheckpointError(f"the graphs in {root} were exported from other weights than this engine's DiT "
                              f"(fingerprint {record.get('weights_fingerprint')} vs {weights_fingerprint(dit)}): export them from this model")
    return Manifest(root, record["package_version"], record["weights_fingerprint"], record["config"], graphs, bool(record.get("fp8")))
