"""Entry point of `fluxd` (the console script) and of `python -m fluxd`."""

from fluxio.entry import guarded


def main() -> None:
    guarded("fluxd", "fluxd.cli")


if __name__ == "__main__":
    main()
