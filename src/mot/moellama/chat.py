"""``mot llama chat``'s session is the shared one: :class:`mot.chat.ChatSession` (names kept here for
existing imports).  moellama is a plain language model, so it chats in the session's default transcript
mode: ``user:`` / ``assistant:`` lines, each reply stopped where the model starts the next ``user:`` line."""

from mot.chat import FIELDS, HELP, TURN_STOP, ChatSession, describe, parse_assignments

__all__ = ["FIELDS", "HELP", "TURN_STOP", "ChatSession", "describe", "parse_assignments"]
