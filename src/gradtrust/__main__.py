"""``python -m gradtrust`` (and ``torchrun -m gradtrust score …``) run the command line."""

from gradtrust.cli import main

main()
