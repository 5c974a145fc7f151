import pytest
import torch

from trdq.models.cache import ModelCache, tensor_bytes


def test_tensor_bytes_counts_shared_storage_once():
    layer = torch.nn.Linear(10, 10)  # 100 + 10 floats
    model = torch.nn.Sequential(layer, layer)
    assert tensor_bytes(model) == 110 * 4


def test_the_cache_drops_least_recently_used_models_beyond_its_bytes():
    built = []

    def build(n):
        built.append(n)
        return torch.nn.Linear(n, 100, bias=False)  # 400 n bytes

    cache = ModelCache(max_bytes=400 * 25)
    a = cache.get("a", lambda: build(10))
    cache.get("b", lambda: build(10))
    assert cache.get("a", lambda: build(99)) is a  # a hit: not rebuilt, and now the most recent
    cache.get("c", lambda: build(10))  # 30 x 400 > bound: b, the least recent, goes
    assert "a" in cache and "c" in cache and "b" not in cache and cache.nbytes() <= cache.max_bytes
    cache.get("big", lambda: build(50))  # alone above the bound: kept, the rest dropped
    assert len(cache) == 1 and "big" in cache and built == [10, 10, 10, 50]


def test_sizes_are_measured_again_when_models_grow():
    cache = ModelCache(max_bytes=4000)
    first = cache.get("a", lambda: torch.nn.Linear(5, 100, bias=False))  # 2000 bytes
    first.register_buffer("grown", torch.zeros(1000))  # as a simulated model's first forward does
    cache.get("b", lambda: torch.nn.Linear(1, 100, bias=False))
    assert "a" not in cache and "b" in cache
    with pytest.raises(ValueError, match="positive"):
        ModelCache(0)
