// Checks pool.h's max_merge_takes, the rule by which the CUDA global max
// joins partial maxima, against window_max's one sequential scan. Run by
// tests/test_shared_header.py; compiled for the host, so it runs without a GPU.
//
// The partials are made as the CUDA kernel makes them: a plane cut into
// chunks, `parts` threads striding each chunk in tap order (max_takes), a
// tree joining the threads, the chunks joined in order. Values come from a
// small set, so that ties, signed zeros, infinities and NaNs (each with its
// own payload, to tell which NaN won) are common.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "pool.h"

using pool_ext::max_merge_takes;
using pool_ext::max_takes;

struct State {
  float value;
  int64_t tap;  // -1: no cell yet
};

void add(State& s, float v, int64_t tap) {
  if (s.tap < 0 || max_takes(v, s.value)) s = {v, tap};
}

void merge(State& into, const State& other) {
  if (max_merge_takes(other.value, other.tap, into.value, into.tap)) into = other;
}

float nan_with_payload(uint32_t payload) {
  const uint32_t bits = 0x7fc00000u | (payload & 0x3fffffu);
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

int main() {
  std::mt19937 rng(12345);
  const float numbers[] = {-INFINITY, -1.f, -0.f, 0.f, 1.f, 2.f, INFINITY};
  int failures = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    const int64_t cells = 1 + rng() % 600;
    const bool with_nans = trial % 3 == 0;
    std::vector<float> x(cells);
    for (int64_t i = 0; i < cells; ++i) {
      x[i] = with_nans && rng() % 8 == 0 ? nan_with_payload(static_cast<uint32_t>(i))
                                         : numbers[rng() % 7];
    }

    pool_ext::PoolGeometry g{};
    for (auto& d : g.dim) d = {1, 1, 1, 1, 0, 0, 1};
    g.dim[2] = {cells, 1, cells, cells, 0, 0, 1};
    g.adaptive = true;
    g.ndim = 1;
    const pool_ext::Window w[3] = {{0, 1, 1, 0}, {0, 1, 1, 0}, {0, 1, cells, 0}};
    const int64_t strides[3] = {0, 0, 1};
    int64_t want_tap;
    const float want = pool_ext::window_max<float, float>(g, w, x.data(), strides, &want_tap);

    const int parts = 1 << (rng() % 9);
    const int64_t chunks = 1 + rng() % 8;
    const int64_t per_chunk = (cells + chunks - 1) / chunks;
    State joined_chunks{0.f, -1};
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      std::vector<State> threads(parts, State{0.f, -1});
      const int64_t last = std::min((chunk + 1) * per_chunk, cells);
      for (int part = 0; part < parts; ++part) {
        for (int64_t p = chunk * per_chunk + part; p < last; p += parts) {
          add(threads[part], x[p], p);
        }
      }
      for (int half = parts / 2; half > 0; half /= 2) {
        for (int part = 0; part < half; ++part) merge(threads[part], threads[part + half]);
      }
      merge(joined_chunks, threads[0]);
    }

    uint32_t want_bits, got_bits;
    std::memcpy(&want_bits, &want, 4);
    std::memcpy(&got_bits, &joined_chunks.value, 4);
    if (joined_chunks.tap != want_tap || got_bits != want_bits) {
      if (++failures <= 5) {
        std::printf("cells %lld parts %d chunks %lld: merged (%g, tap %lld), scan (%g, tap %lld)\n",
                    static_cast<long long>(cells), parts, static_cast<long long>(chunks),
                    joined_chunks.value, static_cast<long long>(joined_chunks.tap), want,
                    static_cast<long long>(want_tap));
      }
    }
  }
  std::printf("%d failures\n", failures);
  return failures == 0 ? 0 : 1;
}
