"""Java and the Spark distribution: what a local Spark cluster needs on the machine."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

MIN_JAVA = 17


class JavaRequirementError(RuntimeError):
    """No Java, or a Java older than 17: Spark 4 needs Java 17 or newer."""


class SparkHomeError(RuntimeError):
    """The Spark distribution (the pyspark package) is missing or incomplete."""


@dataclass(frozen=True, slots=True)
class JavaInfo:
    executable: str
    version: str
    major: int
    home: Path


_JAVA_HINT = (
    "Install Java 17 or newer, e.g. `sudo apt-get install openjdk-17-jre-headless` "
    "(Debian/Ubuntu), `sudo dnf install java-17-openjdk-headless` (Fedora/RHEL) or "
    "`brew install openjdk@17` (macOS), then put `java` on PATH or set JAVA_HOME "
    "(or pass java=... to LocalSparkProvisioner)."
)


def check_java(java: str | None = None) -> JavaInfo:
    """Find Java (the `java` argument, else $JAVA_HOME/bin/java, else `java` on PATH) and check
    that it is 17 or newer; raise JavaRequirementError with install instructions if not."""
    candidate = java
    if candidate is None and os.environ.get("JAVA_HOME"):
        candidate = str(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
    if candidate is None:
        candidate = "java"
    exe = candidate if os.sep in candidate else shutil.which(candidate)
    if not exe or not os.access(exe, os.X_OK):
        raise JavaRequirementError(
            f"Java was not found ({candidate!r}); Apache Spark needs Java {MIN_JAVA}+. "
            + _JAVA_HINT
        )
    try:
        out = subprocess.run(
            [exe, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise JavaRequirementError(f"Could not run {exe} -version: {e}. " + _JAVA_HINT) from e
    text = out.stderr + out.stdout
    m = re.search(r'version "(\d+)(?:\.(\d+))?[^"]*"', text)
    if not m:
        raise JavaRequirementError(
            f"Could not tell the Java version of {exe} from {text.strip()[:200]!r}. " + _JAVA_HINT
        )
    major = int(m.group(1))
    if major == 1 and m.group(2):  # "1.8.0_412" is Java 8
        major = int(m.group(2))
    version = m.group(0).split('"')[1]
    if major < MIN_JAVA:
        raise JavaRequirementError(
            f"{exe} is Java {version}; Apache Spark 4 needs Java {MIN_JAVA} or newer. " + _JAVA_HINT
        )
    home = Path(os.path.realpath(exe)).parent.parent
    return JavaInfo(executable=exe, version=version, major=major, home=home)


def default_spark_home() -> Path:
    """The Spark distribution bundled in the installed pyspark package."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.origin:
        raise SparkHomeError("pyspark is not installed: pip install 'pyspark[connect]~=4.1.0'")
    return Path(spec.origin).parent


def spark_build(spark_home: Path) -> tuple[str, str]:
    """(Spark version, Scala version) of a distribution, read from its spark-core jar."""
    for jar in sorted((spark_home / "jars").glob("spark-core_*.jar")):
        m = re.fullmatch(r"spark-core_(\d+\.\d+)-(\d+\.\d+\.\d+)(?:[-.].*)?\.jar", jar.name)
        if m:
            return m.group(2), m.group(1)
    raise SparkHomeError(f"no jars/spark-core_*.jar under {spark_home}: not a Spark distribution")


def check_spark_home(spark_home: Path) -> tuple[str, str]:
    """Check that `spark_home` has what a local cluster runs (the launchers, Spark Connect);
    return its (Spark version, Scala version)."""
    for rel in ("bin/spark-class", "bin/spark-submit"):
        if not (spark_home / rel).exists():
            raise SparkHomeError(f"{spark_home / rel} is missing")
    if not list((spark_home / "jars").glob("spark-connect_*.jar")):
        raise SparkHomeError(
            f"no jars/spark-connect_*.jar under {spark_home}: Spark Connect is needed "
            "(pip install 'pyspark[connect]~=4.1.0')"
        )
    return spark_build(spark_home)
