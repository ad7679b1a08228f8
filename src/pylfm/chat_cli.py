"""``pylfm chat``: speech-to-speech answers (the command lives in speak_cli.py)."""

from .speak_cli import add_chat_arguments as add_arguments  # noqa: F401
from .speak_cli import main_chat as main  # noqa: F401
