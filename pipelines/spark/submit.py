"""``spark-submit`` entry point: ``feedrec prepare --engine spark`` on a cluster.

spark-submit runs Python *files*, not console scripts, so this file is the
application to submit; it takes the flags of ``feedrec prepare`` (the engine
is always ``spark``) and runs on the session spark-submit configured::

    spark-submit --master yarn pipelines/spark/submit.py \\
        --format globo s3a://bucket/globo/ --out s3a://bucket/data/globo --on-bad-rows skip

Its path: ``python -c "import pipelines.spark.submit as m; print(m.__file__)"``.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the ``prepare`` flags, force ``--engine spark``, run; the exit code."""
    from pipelines.cli import add_arguments, run

    parser = argparse.ArgumentParser(prog="submit.py", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    args.engine = "spark"
    args.no_progress = True
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
