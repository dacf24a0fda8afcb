// Unit tests of the torch-free kernel core (csrc/include/swarmkern): Philox against the Random123
// known-answer vectors and the Python spec, storage conversions, the update rule's operation order,
// the merge kernels' block math (sign election + disjoint mean, the DARE Philox stream).
// Run through ctest (CMakeLists.txt); `test_core <group>` runs one group.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "swarmkern/dtype.h"
#include "swarmkern/merge.h"
#include "swarmkern/philox.h"
#include "swarmkern/update.h"

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::fprintf(stderr, "FAIL: %s\n", what.c_str());
  }
}

std::string hex(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%08x", v);
  return buf;
}

void test_philox() {
  using swarmkern::philox4x32_10;
  struct Kat {
    uint32_t c[4], k[2], out[4];
  };
  // Random123 kat_vectors: philox4x32 10 rounds.
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Kat& kat : kats) {
    const auto r = philox4x32_10(kat.c[0], kat.c[1], kat.c[2], kat.c[3], kat.k[0], kat.k[1]);
    for (int i = 0; i < 4; ++i) {
      expect(r.v[i] == kat.out[i], "philox KAT word " + std::to_string(i) + ": got " + hex(r.v[i]) + ", want " +
                                       hex(kat.out[i]));
    }
  }
}

void test_element_stream() {
  // Values from swarmkern/ops/philox.py (the spec), seed 0x0123456789ABCDEF, element indices past 2^32.
  struct Case {
    uint32_t particle, iteration;
    int64_t element;
    uint32_t words[4];
  };
  const uint64_t seed = 0x0123456789ABCDEFull;
  const Case cases[] = {
      {0, 0, 0, {0xb850222e, 0xc58cb04b, 0x14a7a020, 0x7a84fff9}},
      {5, 7, (int64_t{1} << 32) + 3, {0x83ffee49, 0x48901dd9, 0x7ccb580d, 0x30186d61}},
      {4294967295u, 4294967295u, (int64_t{1} << 40) + 12345, {0xd32099c2, 0x267b6d2d, 0x1d1129a6, 0x1835a895}},
  };
  for (const Case& c : cases) {
    float u[4];
    swarmkern::element_uniforms(seed, c.iteration, c.particle, c.element, u);
    for (int i = 0; i < 4; ++i) {
      const float want = static_cast<float>(c.words[i] >> 8) * 5.9604644775390625e-08f;
      expect(u[i] == want, "element_uniforms(element=" + std::to_string(c.element) + ") word " + std::to_string(i));
      expect(u[i] >= 0.0f && u[i] < 1.0f, "uniform in [0, 1)");
    }
  }
  expect(swarmkern::uniform_from_word(0xffffffffu) == 1.0f - 5.9604644775390625e-08f, "largest uniform is 1-2^-24");
}

float f(uint32_t bits) { return swarmkern::bits_float(bits); }

void test_bf16() {
  using swarmkern::bf16_to_float;
  using swarmkern::float_to_bf16;
  for (uint32_t h = 0; h < 65536; ++h) {  // every bf16 survives the round trip (NaNs stay NaN)
    const float x = bf16_to_float(static_cast<uint16_t>(h));
    const uint16_t back = float_to_bf16(x);
    if (std::isnan(x)) {
      expect(std::isnan(bf16_to_float(back)), "bf16 NaN stays NaN");
    } else {
      expect(back == h, "bf16 round trip of " + hex(h));
    }
  }
  expect(float_to_bf16(f(0x3F808000)) == 0x3F80, "bf16 tie rounds to even (down)");
  expect(float_to_bf16(f(0x3F818000)) == 0x3F82, "bf16 tie rounds to even (up)");
  expect(float_to_bf16(f(0x3F808001)) == 0x3F81, "bf16 above the tie rounds up");
  expect(float_to_bf16(f(0x7F7FFFFF)) == 0x7F80, "bf16 overflow rounds to inf");
}

void test_fp16() {
  using swarmkern::float_to_fp16;
  using swarmkern::fp16_to_float;
  for (uint32_t h = 0; h < 65536; ++h) {
    const float x = fp16_to_float(static_cast<uint16_t>(h));
    const uint16_t back = float_to_fp16(x);
    if (std::isnan(x)) {
      expect(std::isnan(fp16_to_float(back)), "fp16 NaN stays NaN");
    } else {
      expect(back == h, "fp16 round trip of " + hex(h));
    }
  }
  expect(fp16_to_float(0x0001) == std::ldexp(1.0f, -24), "smallest fp16 subnormal is 2^-24");
  expect(fp16_to_float(0x7BFF) == 65504.0f, "largest fp16 is 65504");
  expect(float_to_fp16(65519.99f) == 0x7BFF, "just below 65520 rounds to 65504");
  expect(float_to_fp16(65520.0f) == 0x7C00, "65520 rounds to inf");
  expect(float_to_fp16(std::ldexp(1.0f, -25)) == 0x0000, "2^-25 ties to even (zero)");
  expect(float_to_fp16(std::ldexp(1.5f, -25)) == 0x0001, "1.5*2^-25 rounds up to the smallest subnormal");
  expect(float_to_fp16(std::ldexp(3.0f, -25)) == 0x0002, "3*2^-25 ties to even (2*2^-24)");
  expect(float_to_fp16(1.0f + std::ldexp(1.0f, -11)) == 0x3C00, "fp16 tie rounds to even (down)");
  expect(float_to_fp16(1.0f + std::ldexp(3.0f, -11)) == 0x3C02, "fp16 tie rounds to even (up)");
  expect(float_to_fp16(-0.0f) == 0x8000, "negative zero keeps its sign");
  // Subnormal/normal boundary: the largest subnormal plus half an ulp rounds (to even) to 2^-14.
  expect(float_to_fp16(std::ldexp(1023.5f, -24)) == 0x0400, "rounding carries into the smallest normal");
}

void test_update_order() {
  // The rule is evaluated left to right with every operation rounded: check against a hand-written
  // expression that forces each rounding through volatile temporaries.
  const swarmkern::PsoCoef<float> c{0.3f, 0.1f, 0.45f, 0.15f};
  const float x = 1.1f, v = -0.7f, p = 2.3f, g = -1.9f, w = 0.77f, step = 0.9f;
  volatile float t0 = c.v * v, t1 = p - x, t2 = c.p * t1, t3 = t0 + t2, t4 = g - x, t5 = c.g * t4, t6 = t3 + t5;
  volatile float t7 = x - w, t8 = c.w * t7, n = t6 + t8, s = step * n, xn = x + s;
  expect(swarmkern::pso_velocity(c, x, v, p, g, w) == n, "pso_velocity order");
  expect(swarmkern::pso_location(x, step, static_cast<float>(n)) == xn, "pso_location order");
  expect(swarmkern::normalized_or_zero(1.0f, 0.0f) == 0.0f, "zero total gives zero velocity");
  expect(swarmkern::normalized_or_zero(1.0f, 4.0f) == 0.25f, "normalised velocity");
  expect(swarmkern::combine_term(0.0f, 2.0f, 3.0f) == 6.0f, "combine term");
}

void test_merge_disjoint_mean() {
  // 3 rows x 5 columns; expected values worked out by hand from the spec (merge/ties.py).
  const float rows[3][5] = {{1.f, -2.f, 0.f, 3.f, -1.f}, {2.f, 1.f, 0.f, -3.f, -1.f}, {-4.f, 1.f, 0.f, 1.f, 2.f}};
  const float w[3] = {1.f, 0.5f, 2.f};
  float out[5];
  // "total": column sums -1, 0, 0, 1, 0 -> signs -1, +1 (tie), +1 (tie), +1, +1
  swarmkern::merge::elect_and_disjoint_mean(&rows[0][0], 5, 3, 5, w, false, out);
  const float total[5] = {-8.f, 1.25f, 0.f, 2.5f, 4.f};
  for (int j = 0; j < 5; ++j) expect(out[j] == total[j], "total disjoint mean column " + std::to_string(j));
  // "frequency": sign votes +1, +1, 0, +1, -1 -> signs +1, +1, +1, +1, -1
  swarmkern::merge::elect_and_disjoint_mean(&rows[0][0], 5, 3, 5, w, true, out);
  const float freq[5] = {1.f, 1.25f, 0.f, 2.5f, -0.75f};
  for (int j = 0; j < 5; ++j) expect(out[j] == freq[j], "frequency disjoint mean column " + std::to_string(j));
}

void test_merge_dare_stream() {
  // The structure-of-arrays Philox of the DARE kernel equals philox4x32_10 counter by counter,
  // including a group index past 2^32.
  const uint64_t first = (uint64_t{1} << 32) - 3;
  const int64_t groups = swarmkern::merge::kDareLanes;
  uint32_t words[4 * swarmkern::merge::kDareLanes];
  swarmkern::merge::dare_philox_groups(first, groups, 7u, 0x89ABCDEFu, 0x01234567u, words);
  for (int64_t q = 0; q < groups; ++q) {
    const uint64_t g = first + static_cast<uint64_t>(q);
    const auto r = swarmkern::philox4x32_10(static_cast<uint32_t>(g), static_cast<uint32_t>(g >> 32), 7u,
                                            swarmkern::merge::kDareStream, 0x89ABCDEFu, 0x01234567u);
    for (int i = 0; i < 4; ++i) {
      expect(words[4 * q + i] == r.v[i], "dare_philox_groups group " + std::to_string(q) + " word " +
                                             std::to_string(i));
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string group = argc > 1 ? argv[1] : "all";
  if (group == "all" || group == "philox") test_philox();
  if (group == "all" || group == "philox") test_element_stream();
  if (group == "all" || group == "dtype") test_bf16();
  if (group == "all" || group == "dtype") test_fp16();
  if (group == "all" || group == "update") test_update_order();
  if (group == "all" || group == "merge") test_merge_disjoint_mean();
  if (group == "all" || group == "merge") test_merge_dare_stream();
  if (failures) {
    std::fprintf(stderr, "%d failure(s)\n", failures);
    return 1;
  }
  std::printf("ok (%s)\n", group.c_str());
  return 0;
}
