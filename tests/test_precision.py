"""`train.precision: auto` without a backend: the resolver on CPU flag lines and GPU compute
capabilities, the benchmark's plan for emulated bfloat16, and its recommendation line."""

from pathlib import Path

import pytest
from conftest import flexunet

from flexunet_k3.benchmark import Case, Row, plan, recommendation
from flexunet_k3.precision import Device, cpu_flags, emulated, resolve_precision

REPO = Path(__file__).resolve().parents[1]
CPUINFO = "processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: {flags}\nbugs\t\t: spectre_v1\n"
COMMON = "fpu vme de pse tsc msr pae cx8 apic sep sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2"
# Intel Xeon Sapphire Rapids: AMX tiles and AVX512_BF16
SAPPHIRE_RAPIDS = CPUINFO.format(
    vendor="GenuineIntel",
    flags=f"{COMMON} avx512f avx512bw avx512vl avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8",
)
# AMD EPYC Rome (Zen 2): AVX2 only
EPYC_ROME = CPUINFO.format(vendor="AuthenticAMD", flags=f"{COMMON} sse4a sha_ni clzero")
# AMD EPYC Genoa (Zen 4): AVX-512 with BF16, no AMX (the flags of the machine this was written on)
EPYC_GENOA = CPUINFO.format(
    vendor="AuthenticAMD",
    flags=f"{COMMON} avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni clzero",
)


def device(cpuinfo: str, gpu=None) -> Device:
    return Device(cpu_flags(cpuinfo), gpu)


@pytest.mark.parametrize(
    "cpuinfo, expected",
    [
        (SAPPHIRE_RAPIDS, ("mixed_bfloat16", "CPU has amx_bf16")),
        (EPYC_GENOA, ("mixed_bfloat16", "CPU has avx512_bf16")),
        (EPYC_ROME, ("float32", "CPU has no amx_bf16 or avx512_bf16")),
        ("processor\t: 0\n", ("float32", "CPU has no amx_bf16 or avx512_bf16")),
    ],
)
def test_auto_on_cpus(cpuinfo, expected):
    assert resolve_precision("auto", device(cpuinfo)) == expected


@pytest.mark.parametrize(
    "capability, expected",
    [((7, 5), "mixed_float16"), ((8, 0), "mixed_bfloat16"), ((9, 0), "mixed_bfloat16")],
)
def test_auto_on_gpus_ignores_the_cpu(capability, expected):
    precision, why = resolve_precision("auto", device(EPYC_ROME, capability))
    assert precision == expected
    assert f"GPU compute capability {capability[0]}.{capability[1]}" in why


def test_a_configured_precision_is_kept():
    assert resolve_precision("mixed_float16", device(SAPPHIRE_RAPIDS)) == (
        "mixed_float16", "configured"
    )


def test_bfloat16_is_emulated_only_on_cpus_without_it():
    assert emulated("mixed_bfloat16", device(EPYC_ROME))
    assert not emulated("mixed_bfloat16", device(EPYC_GENOA))
    assert not emulated("mixed_bfloat16", device(EPYC_ROME, (8, 0)))
    assert not emulated("float32", device(EPYC_ROME))


def test_benchmark_cuts_emulated_bfloat16_short_and_says_so():
    case = Case("tensorflow", "mixed_bfloat16", "auto", 4, steps=10, warmup=3)
    short, precision, note = plan(case, device(EPYC_ROME))
    assert (short.steps, short.warmup, precision) == (2, 1, "mixed_bfloat16")
    assert note.startswith("emulated") and "avx512_bf16" in note
    assert plan(case, device(EPYC_GENOA)) == (case, "mixed_bfloat16", "")


def test_benchmark_auto_shows_what_it_resolved_to():
    case = Case("torch", "auto", "auto", 4, steps=10, warmup=3)
    assert plan(case, device(EPYC_ROME)) == (
        case, "float32", "auto: CPU has no amx_bf16 or avx512_bf16"
    )


def row(backend, precision, rate, resolved=""):
    return Row(Case(backend, precision, "auto", 4, 10, 3), precision=resolved,
               train_images_per_s=rate, error=None if rate else "timed out after 1800 s")


def test_recommendation_names_the_fastest_measured_row():
    rows = [
        row("tensorflow", "float32", 3.4),
        row("tensorflow", "auto", 10.3, resolved="mixed_bfloat16"),
        row("jax", "float32", None),
        row("torch", "float32", 2.5),
    ]
    line = recommendation(rows)
    assert line == (
        "fastest on this machine: backend tensorflow, precision mixed_bfloat16, jit auto "
        "(10.30 train img/s)"
    )


def test_no_recommendation_for_one_row_or_none_measured():
    assert recommendation([row("tensorflow", "float32", 3.4)]) is None
    assert recommendation([row("jax", "float32", None), row("torch", "float32", None)]) is None


def test_config_validate_accepts_auto():
    done = flexunet(
        "config", "validate", str(REPO / "configs" / "demo.yaml"), "--set", "train.precision=auto"
    )
    assert done.returncode == 0 and "valid" in done.stdout, done.stderr
