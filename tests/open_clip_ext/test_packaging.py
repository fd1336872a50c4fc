"""A real (non-editable) install carries the configs, registers them on import, and carries every subpackage."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_non_editable_install_registers_configs(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(ROOT)], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("open_clip_ext-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, cwd=tmp_path)
    probe = (
        "import open_clip, open_clip_ext, training_ext;"
        "print(open_clip_ext.__file__);"
        "print(open_clip_ext.shipped_config_dir());"
        "print(open_clip.get_model_config('ViT-L-14-rope-248')['text_cfg']['pos_embed_type']);"
        "print(open_clip.get_tokenizer('tiny-clip-cope-248')(['x']).shape[1]);"
        "import training_ext.eval.runner, training_ext.engine.trainer, training_ext.demo.colour_grids;"
        "print(training_ext.eval.runner.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}).stdout.split()
    assert out[0].startswith(str(site)), out  # imported from the install, not the checkout
    assert out[1].startswith(str(site)) and (Path(out[1]) / "tiny-clip.json").is_file()
    assert out[2:4] == ["rope", "248"]
    assert out[4].startswith(str(site))  # a subpackage's entry point comes from the wheel too
