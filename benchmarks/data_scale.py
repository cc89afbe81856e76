"""Data at scale: memory, time to the first batch and epoch speed as a folder grows, kfactory vs Keras.

Writes folders of N JPEG photos (320x240, two classes; input_pipeline.write_jpegs)
and reads each into batches of 32 at SIZE x SIZE for two epochs, every way in a
fresh process (so peak RSS is that way's alone), the ways alternating:
  keras         keras.utils.image_dataset_from_directory (decodes every epoch)
  keras+cache   the same with .cache() (float32 images in memory; skipped where they
                would not fit in half of this machine's memory)
  kf cold       kfactory.data.pipeline.make_splits, data.cache=auto, an empty decode
                cache: the one decode pass builds the shared cache, then epochs read it
  kf second     the same command again: a second run, reading the cache the first built
  kf disk       data.cache=disk, a second run: the cache streamed from disk, never in memory
Reported per way: peak RSS, seconds from TensorFlow's import to the first batch,
epoch-1 and epoch-2 images/s (kfactory's epoch 1 starts once make_splits has built or
opened the cache; "cold total" is from the import to the end of epoch 1, build included),
and the cache's size on disk.
Targets (issue "Data at any scale"): kf disk peak RSS at 32k within 300 MB of 8k;
kf second reaches its first batch within 10 s of TensorFlow's import; epoch 1 >= keras,
epoch 2 >= 3x keras.

    python benchmarks/data_scale.py --images 2000 8000 32000 --size 224
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from input_pipeline import BATCH, kfactory_config, warm_file_cache, write_jpegs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WAYS = ("keras", "keras+cache", "kf cold", "kf second", "kf disk")


def child(way: str, folder: Path, size: int, cache_dir: Path) -> dict:
    """Read ``folder`` the way named, for two epochs; timings from the end of TensorFlow's import."""
    started = time.perf_counter()
    import tensorflow as tf

    imported = time.perf_counter()
    if way.startswith("keras"):
        import keras

        ds = keras.utils.image_dataset_from_directory(folder, image_size=(size, size), batch_size=BATCH, seed=0)
        if way == "keras+cache":
            ds = ds.cache()
        ds, count = ds.prefetch(tf.data.AUTOTUNE), None
    else:
        sys.path.insert(0, str(ROOT))
        from kfactory.data.pipeline import make_splits
        from kfactory.schema import register_schema

        register_schema()
        cfg = kfactory_config(folder, size)
        cfg.data.cache_dir = str(cache_dir)
        cfg.data.cache = "disk" if way == "kf disk" else "auto"
        splits = make_splits(cfg)
        ds, count = splits.train, len(splits.indices["train"])
    result = {"import_s": imported - started}
    for epoch in (1, 2):
        seen, begin = 0, time.perf_counter()
        for images, _ in ds:
            if epoch == 1 and seen == 0:
                result["first_batch_s"] = time.perf_counter() - imported
            seen += int(images.shape[0])
        end = time.perf_counter()
        result[f"epoch{epoch}_ips"] = seen / (end - begin)  # from the pipeline's first read to its last batch
        if epoch == 1:
            result["cold_total_s"] = end - imported  # kfactory: the cache build (if any) and epoch 1
    result["images"] = count or seen
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def run_way(way: str, folder: Path, size: int, cache_dir: Path) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, __file__, "--child", way, str(folder), str(size), str(cache_dir)]
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        raise RuntimeError(f"{way} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(count: int, size: int, work: Path) -> dict[str, dict]:
    folder = work / f"photos_{count}"
    if not folder.exists():
        write_jpegs(folder, count)
    warm_file_cache(folder)
    cache_dir = work / f"cache_{count}"
    shutil.rmtree(cache_dir, ignore_errors=True)
    float_bytes = count * size * size * 3 * 4
    results = {}
    for way in ("kf cold", "keras", "kf second", "keras+cache", "kf disk"):  # alternating kfactory and Keras
        if way == "keras+cache" and float_bytes > 0.5 * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"):
            results[way] = {"skipped": f"needs {float_bytes / 1e9:.0f} GB of float32 images in memory"}
            continue
        results[way] = run_way(way, folder, size, cache_dir)
        print(f"{count:>7} {way:<12} {json.dumps({k: round(v, 2) for k, v in results[way].items()})}", flush=True)
    results["cache_gb"] = folder_bytes(cache_dir) / 1e9
    results["folder_gb"] = folder_bytes(folder) / 1e9
    return results


def report(all_results: dict[int, dict]) -> None:
    print("\n| images | way | peak RSS MB | s to first batch | epoch 1 img/s | epoch 2 img/s | cold total s |")
    print("|---|---|---|---|---|---|---|")
    for count, results in all_results.items():
        for way in WAYS:
            r = results[way]
            if "skipped" in r:
                print(f"| {count} | {way} | skipped: {r['skipped']} | | | | |")
                continue
            print(
                f"| {count} | {way} | {r['peak_rss_mb']:.0f} | {r['first_batch_s']:.1f} | {r['epoch1_ips']:.0f} "
                f"| {r['epoch2_ips']:.0f} | {r['cold_total_s']:.1f} |"
            )
        keras, cold = results["keras"], results["kf cold"]
        cold_ratio = (keras["images"] / keras["epoch1_ips"]) / cold["cold_total_s"]
        second = results["kf second"]["epoch2_ips"] / keras["epoch2_ips"]
        disk = results["kf disk"]["epoch2_ips"] / keras["epoch2_ips"]
        print(
            f"| {count} | ratios | cache {results['cache_gb']:.2f} GB (folder {results['folder_gb']:.2f} GB) | "
            f"| keras epoch 1 time / kf cold total: {cold_ratio:.2f}x | epoch 2 vs keras: kf second {second:.1f}x, "
            f"kf disk {disk:.1f}x | |"
        )
    counts = sorted(all_results)
    if len(counts) >= 2:
        a, b = counts[-2], counts[-1]
        growth = all_results[b]["kf disk"]["peak_rss_mb"] - all_results[a]["kf disk"]["peak_rss_mb"]
        print(f"\nkf disk peak RSS, {a} -> {b} images: {growth:+.0f} MB (target: within 300 MB)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        way, folder, size, cache_dir = sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
        print(json.dumps(child(way, folder, size, cache_dir)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[2000, 8000, 32000])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the folders here (default: a temp dir)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="kf_data_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        report({count: measure(count, args.size, work) for count in args.images})
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
