"""A fixture that restores open_clip's config and pretrained-tag registries after a test: names a test registers
(on demand by `<base>-<kind>-<N>`, or with register_variant / register_model_config) would otherwise show in the
registry listings later tests read."""
import open_clip.factory
import open_clip.pretrained
import pytest


@pytest.fixture
def restored_registry():
    configs, tags = set(open_clip.factory._MODEL_CONFIGS), set(open_clip.pretrained._PRETRAINED)
    yield
    for name in set(open_clip.factory._MODEL_CONFIGS) - configs:
        open_clip.factory._MODEL_CONFIGS.pop(name)
    for name in set(open_clip.pretrained._PRETRAINED) - tags:
        open_clip.pretrained._PRETRAINED.pop(name)
