"""Long runs: memory stays flat over hundreds of steps, video frames stream to ffmpeg, run folders never collide."""
import multiprocessing
import os
import threading

import numpy as np

from vqclip import generate, load_config
from vqclip.outputs import VideoWriter, new_run_dir


def _rss() -> int:
    """This process's resident memory in bytes (from /proc/self/statm)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_memory_does_not_grow_with_the_number_of_steps(tiny_overrides):
    rss = {}

    def record(info):
        if info["step"] in (50, 299) and not info["final"]:
            rss[info["step"]] = _rss()

    cfg = load_config([], tiny_overrides + ["steps=300", "size=[32,32]", "cutouts.cutn=2", "cutouts.augments=[]",
                                            "output.video=true", "output.save_every=100"], prompts=["x"])
    result = generate(cfg, callbacks=[record], progress=False)
    assert len(result.losses) == 300
    # A leak of one step's autograd graph or image per step would add tens of MB over 250 steps.
    assert rss[299] - rss[50] < 8 * 2**20, (rss[50], rss[299])


def test_video_frames_stream_instead_of_piling_up(tmp_path):
    writer = VideoWriter(tmp_path / "v.mp4", fps=30)
    frame = np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8)  # 192 KiB a frame
    for _ in range(20):
        writer.append(frame)
    start = _rss()
    for _ in range(300):  # 56 MiB of frames if they were kept
        writer.append(frame)
    grown = _rss() - start
    assert writer.close() == tmp_path / "v.mp4" and writer.frames == 320
    assert grown < 16 * 2**20, grown


def _make(root, barrier, out):
    barrier.wait()
    out.put(str(new_run_dir(root, "same label")))


def test_runs_started_at_the_same_moment_get_different_folders(tmp_path):
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_make, args=(tmp_path, barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    folders = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    tbarrier, found = threading.Barrier(8), []
    threads = [threading.Thread(target=lambda: (tbarrier.wait(), found.append(str(new_run_dir(tmp_path, "same label")))))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    folders += found
    assert len(folders) == 12 and len(set(folders)) == 12
    assert all(os.path.isdir(f) and not os.listdir(f) for f in folders)
