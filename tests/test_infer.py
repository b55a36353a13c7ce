"""`flexunet infer`: palette masks named and sized like their inputs, overlays, bad inputs."""

import numpy as np
import pytest
from conftest import assert_one_line_error, flexunet
from PIL import Image

INPUTS = {"gray.png": ((32, 32), "L"), "wide.jpg": ((50, 40), "RGB"), "small.png": ((20, 24), "L")}


def test_masks_overlays_and_mosaic(trained_run, tmp_path):
    images, output = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, ((width, height), mode) in INPUTS.items():
        shape = (height, width, 3) if mode == "RGB" else (height, width)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(images / name)
    (images / "notes.txt").write_text("not an image")

    done = flexunet("infer", "--config", str(trained_run), "--images", str(images),
                    "--output", str(output), "--overlay")
    assert done.returncode == 0, done.stderr
    assert "notes.txt" in done.stderr and "skipped 1 non-image" in done.stderr

    files = sorted(path.name for path in output.iterdir() if path.is_file())
    assert files == ["gray.png", "small.png", "wide.png"]
    for name, (size, _) in INPUTS.items():
        stem = name.rsplit(".", 1)[0]
        mask = Image.open(output / f"{stem}.png")
        assert mask.mode == "P" and mask.size == size
        assert mask.getpalette()[:6] == [0, 0, 0, 255, 255, 255]
        assert set(np.unique(np.asarray(mask))) <= {0, 1}
        overlay = Image.open(output / "overlays" / f"{stem}.png")
        assert overlay.mode == "RGB" and overlay.size == size
    assert (output / "mosaic" / "mosaic.png").is_file()


@pytest.mark.once  # refused whatever the backend: run in one session
def test_bad_inputs_exit_2_with_one_line(trained_run, tmp_path):
    assert_one_line_error(
        flexunet("infer", "--config", str(trained_run), "--images", str(tmp_path / "none")),
        "folder not found",
    )
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(images / "a.png")
    assert_one_line_error(
        flexunet("infer", "--config", str(trained_run), "--images", str(images),
                 "--output", str(images)),
        "is the input folder",
    )
    (images / "z.png").write_bytes(b"not a png")  # sorts after a.png, read in a later batch
    output = tmp_path / "out"
    output.mkdir()
    (output / "a.png").write_text("an earlier mask")
    done = flexunet("infer", "--config", str(trained_run), "--images", str(images),
                    "--output", str(output))  # a user's file of the same name
    assert_one_line_error(done, "already holds a.png", "--overwrite")
    done = flexunet("infer", "--config", str(trained_run), "--images", str(images),
                    "--output", str(output), "--set", "infer.batch_size=1", "--overwrite")
    assert_one_line_error(done, "z.png", "cannot read image")
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []
    assert (output / "a.png").read_text() == "an earlier mask"  # untouched
    for command in ("infer", "evaluate"):  # a config that does not describe the trained model
        done = flexunet(command, "--config", str(trained_run), "--set", "model.base_filters=8")
        assert_one_line_error(done, "trained with model.base_filters 4, not as the config says")
