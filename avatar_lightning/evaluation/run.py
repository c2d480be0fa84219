"""The ``evaluate`` and ``compare`` commands' work, callable from the demo: models loaded, everything scored, the
reports written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from avatar_lightning.cache.layout import latent_source
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.checkpoints import load_model
from avatar_lightning.errors import CacheError
from avatar_lightning.evaluation.candidates import find_runs
from avatar_lightning.evaluation.cross_identity import add_cross_identity, make_synthetic_drivers, require_truth
from avatar_lightning.evaluation.evaluate import Evaluation, evaluate
from avatar_lightning.evaluation.identity import load_embedder
from avatar_lightning.evaluation.reenactment import LADDER_FRAMES, self_reenactment
from avatar_lightning.evaluation.report import write_outputs, write_report
from avatar_lightning.evaluation.tables import Row, find_scores
from avatar_lightning.evaluation.transfer_grid import markdown, transfer_results, write_transfer, write_transfer_outputs
from avatar_lightning.models.head_vae import load_head_vae
from avatar_lightning.models.rerender import Rerenderer
from avatar_lightning.nets.perceptual import load_lpips


def run_evaluation(runs: Sequence[str | Path], cache_dir: str | Path, out: Path, rerender: str | Path | None = None,
                   head_vae: str | Path | None = None, latents: str = "head_vae",
                   cameras: Sequence[str] | None = None, image_frames: int = 50, synthetic: str | None = None,
                   synthetic_drivers: Sequence[str | Path] = (), drivers: Sequence[str | Path] = (),
                   work: Path | None = None, lpips_backbone: str | None = None,
                   ladder_frames: int = LADDER_FRAMES) -> Evaluation:
    """``evaluate``'s work, callable from the demo: evaluate, score real drivers, write the report."""
    cache = CaptureCache(cache_dir)
    run_dirs = find_runs(runs)
    source = head_vae or latent_source(cache, latents)
    if source is None:
        raise CacheError(f"{cache.root}: no head VAE recorded for latents/{latents}; pass --head-vae (the checkpoint "
                         "that encoded the latents the animators learned)")
    vae = load_head_vae(source)
    model = load_model(Rerenderer, rerender) if rerender else None
    lpips = load_lpips(lpips_backbone) if model is not None else None  # None (said once) without its file
    work = work or out / "work"
    driver_dirs = [Path(d) for d in synthetic_drivers]
    for folder in driver_dirs:  # now, not after minutes of scoring
        require_truth(CaptureCache(folder))
    if synthetic:
        driver_dirs += make_synthetic_drivers(synthetic, work / "synthetic")
    embedder = load_embedder() if model is not None else None  # None (said once) without dlib or its files
    evaluation = evaluate(run_dirs, cache, vae, model, latents, cameras, image_frames, driver_dirs, lpips,
                          embedder=embedder)
    if model is not None and ladder_frames > 0:  # the chosen cell, frame by frame on the held-out tail
        evaluation.ladder = self_reenactment(cache, vae, model, evaluation.chosen.candidate, latents,
                                             camera=cameras[0] if cameras else None, max_frames=ladder_frames,
                                             out=out)
    transfer_table = ""
    if drivers:
        results = transfer_results(run_dirs, drivers, str(cache.root), work / "drivers")
        by_dir = {r.run_dir.resolve(): r for r in results}
        for s in evaluation.scores:
            if s.candidate.run_dir is not None and s.candidate.run_dir.resolve() in by_dir:
                s.metrics["transfer_r"] = by_dir[s.candidate.run_dir.resolve()].metrics()["transfer_r"]
        transfer_table = markdown(results)
        write_transfer_outputs(results, drivers, out)
    write_report(evaluation, cache, out, transfer_table)
    return evaluation


def compare_runs(rows: Sequence[Row], runs: Sequence[str | Path], metrics: Sequence[str], out: Path,
                 drivers: Sequence[str] = (), synthetic_drivers: Sequence[str] = (), cache: str | None = None,
                 work: Path | None = None) -> tuple[str, list[Path]]:
    """``compare``'s work on the rows of ``runs`` (:func:`tables.collect_rows`): cross-identity scores on synthetic
    drivers (a column ``xid_relative_error``), the table, CSV and plots, and every run's transfer on real drivers;
    returns the table and the files written."""
    metrics = list(metrics)
    written_cross: list[Path] = []
    if synthetic_drivers:
        written_cross = add_cross_identity(rows, synthetic_drivers, cache, out)
        metrics.append("xid_relative_error")
    table, written = write_outputs(rows, metrics, out)
    written += written_cross
    if drivers:
        written += write_transfer(find_scores(runs), drivers, out, cache, work or out / "drivers")
    return table, written
