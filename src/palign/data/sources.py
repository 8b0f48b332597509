"""Where the release files come from (public URLs and their sha256 sums)."""

from __future__ import annotations

from dataclasses import dataclass

PAPI_COMMIT = "376f810302337810cd304b16b876738544358fff"
_PAPI_RAW = f"https://raw.githubusercontent.com/zhu-minjun/PAlign/{PAPI_COMMIT}"
SD3_COMMIT = "5c97a7eebd2809cc526b1671d1fdeb82cedd5545"
_SD3_RAW = f"https://raw.githubusercontent.com/haghish/openpsychometrics/{SD3_COMMIT}/SD3"


@dataclass(frozen=True)
class RemoteFile:
    """One release file: its name in the data folder, URL and sha256."""

    name: str
    url: str
    sha256: str


PAPI_FILES: tuple[RemoteFile, ...] = (
    RemoteFile(
        "IPIP-NEO-ItemKey.xls",
        f"{_PAPI_RAW}/PAPI/IPIP-NEO-ItemKey.xls",
        "586e92af319bdea185e18a56894191504336e067d0454522da345c43688ce158",
    ),
    RemoteFile(
        "Test-set.json",
        f"{_PAPI_RAW}/PAPI/Test-set.json",
        "5e46c6cf2b0d72762cce69fe455ae827f2c4cdc27a0979dc9b1e58d09b9ae4c6",
    ),
    RemoteFile(
        "mpi_300_split.json",
        f"{_PAPI_RAW}/PAPI/mpi_300_split.json",
        "85c761554504dd1b086de98e13fe84fb6e02915ad7bf2e234bb32428894a52c6",
    ),
    RemoteFile(
        "mpi_300.csv",
        f"{_PAPI_RAW}/PAPI/mpi_300.csv",
        "a26d47a419117aa838fa720ebecd72d1c61f19fe58d96c5e4680666b027053a2",
    ),
    RemoteFile(
        "mpi_120.csv",
        f"{_PAPI_RAW}/PAPI/mpi_120.csv",
        "f20e591fc97779872a41c55c35bc8809e90b99d63312c0cc47420460157e63a8",
    ),
    RemoteFile(
        "personality_prompt.json",
        f"{_PAPI_RAW}/PAPI/personality_prompt.json",
        "400a5d941d77caf04e5450f887f64e5a96e7906f420e0b12c3690f39734af008",
    ),
    RemoteFile(
        "IPIP_Permission.pdf",
        f"{_PAPI_RAW}/IPIP_Permission.pdf",
        "f8a80d6411e33507bdfddfc719584361c97871c08b2e2107ac44c8d1dcb2e0c1",
    ),
)

SD3_FILES: tuple[RemoteFile, ...] = (
    RemoteFile(
        "data.csv",
        f"{_SD3_RAW}/data.csv",
        "80f82fb13da1679001f08cee9bf2be23c48ffa2392d561e3da8b757a63167d84",
    ),
    RemoteFile(
        "codebook.txt",
        f"{_SD3_RAW}/codebook.txt",
        "1b5d96d5007b6649233a31c521faba43ca5483703a3205d04d1f2d798b1cf70c",
    ),
)

FILES = {"ipip-neo": PAPI_FILES, "sd3": SD3_FILES}
