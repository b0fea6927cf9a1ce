"""Entry point of `fluxctl` (the console script) and of `python -m fluxctl`."""

from fluxio.entry import guarded


def main() -> None:
    guarded("fluxctl", "fluxctl.cli")


if __name__ == "__main__":
    main()
