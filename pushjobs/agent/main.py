"""Entry point placeholder; replaced by the owning work item."""
import sys


def main(argv=None) -> int:
    print("usage: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
