"""Chat tab: multi-turn chat with any model, rated replies saved for fine-tuning, and an arena
where one message is answered by two models side by side.

Each browser's conversation is its Chatbot value (plus its ratings and conversation id in
gr.State), never module state, so two sessions never see each other's history.
"""
from __future__ import annotations

import threading
import weakref

import gradio as gr

from studio import chat, devices, models
from studio.ui.common import MODEL_QUEUE, DecodingControls, Pickers, on, user_errors, with_decoding
from studio.workspace import DEFAULT_MODEL, Workspace

STOP_HELP = "stop strings, | between them, \\n = newline; end-of-text always stops"
# the arena compares two models each at its own defaults (as each was made to answer), or both
# at the chat's settings (the same settings, so only the weights differ); stop strings are always the chat's
ARENA_DECODING = ("each model's own defaults", "the chat's settings above")


def text_of(content) -> str:
    """Gradio hands message content in as a list of parts; the engine wants the text."""
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content or [])


def plain(history) -> list[dict]:
    return [{"role": m["role"], "content": text_of(m["content"])} for m in history or []
            if m["role"] in ("user", "assistant")]


def status(reply: chat.Reply, block_size: int) -> str:
    ended = {"eos": "ended by end-of-text", "stop": "ended by a stop string", "length": "ended by max new tokens",
             "context": "ended by the context window", "stopped": "stopped by you"}.get(reply.finish_reason or "")
    text = f"{reply.n_tokens} tokens" + (f", {ended}" if ended else "")
    note = chat.fit_note(reply, block_size)
    return f"{text}; {note}" if note else text


class StopRequests:
    """A Stop button, per browser session: each session's streaming reply gets its own Event, which
    the engine checks between two tokens (`chat.reply_stream`). (Gradio's `cancels` kills the event
    instead, racing the status line against the last streamed update.) The chat and the arena have one each."""

    def __init__(self) -> None:
        self._flags: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # a flag lives while its reply streams

    @staticmethod
    def _key(request: gr.Request | None) -> str:
        return getattr(request, "session_hash", None) or ""

    def begin(self, request: gr.Request = None) -> threading.Event:
        flag = threading.Event()
        self._flags[self._key(request)] = flag
        return flag

    def stop(self, request: gr.Request = None) -> None:
        flag = self._flags.get(self._key(request))
        if flag is not None:
            flag.set()


def _stream(loaded, history: list[dict], message: str, settings, system: str, stopped: threading.Event):
    """Yield (shown history, status) while the reply grows: the user's message shows at once."""
    shown = history + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
    yield shown, "generating..."
    for reply in chat.reply_stream(loaded, history, message, settings, system, stop=stopped):
        shown[-1]["content"] = reply.text
        yield shown, status(reply, loaded.block_size)


def _prune(ratings: dict, n_messages: int) -> dict:
    """Ratings of messages that are gone (undone, regenerated) must not stick to new replies."""
    return {i: r for i, r in (ratings or {}).items() if i < n_messages}


def build(demo: gr.Blocks, ws: Workspace, pickers: Pickers) -> None:
    ratings = gr.State({})  # assistant message index -> +1 / -1
    chat_stops, arena_stops = StopRequests(), StopRequests()
    conversation_id = gr.State("")
    with gr.Row():
        with gr.Column(scale=3):
            model = pickers.model()
            system = gr.Textbox(label="System prompt", placeholder="optional: the first line of every prompt")
            chatbot = gr.Chatbot(label="Chat", height=420, buttons=["copy"])
            note = gr.Textbox(label="Status", interactive=False)
            message = gr.Textbox(label="Message", placeholder="type and press Enter")
            with gr.Row():
                send_btn = gr.Button("Send", variant="primary")
                stop_btn = gr.Button("Stop", variant="stop")
                regen_btn = gr.Button("Regenerate")
                undo_btn = gr.Button("Undo")
                clear_btn = gr.Button("Clear")
        with gr.Column(scale=2):
            with gr.Accordion("Decoding settings", open=True):
                dec = DecodingControls(models.default_decoding(DEFAULT_MODEL), label="Chat")
                stop_text = gr.Textbox(chat.format_stop_list(chat.DEFAULT_STOP), label="Stop strings", info=STOP_HELP)
                device = gr.Dropdown(list(devices.DEVICES), value="auto", label="Device")
            with gr.Accordion("Save for fine-tuning", open=True):
                file_name = gr.Textbox(chat.DEFAULT_FILE, label="File",
                                       info=f"JSONL user/assistant pairs in {chat.CHATS_DIR}/ of the checkpoints "
                                            "folder; the Train tab takes it as data")
                save_btn = gr.Button("Save conversation")
                saved = gr.Textbox(label="Saved", interactive=False)
    with gr.Accordion("Arena: one message, two models side by side", open=False):
        with gr.Row():
            model_a = pickers.model("Model A", value="gpt2")
            model_b = pickers.model("Model B", value=(models.list_checkpoints() or [DEFAULT_MODEL])[0])
            arena_decoding = gr.Radio(list(ARENA_DECODING), value=ARENA_DECODING[0], label="Decoding",
                                      info="max new tokens always within each model's context")
        with gr.Row():
            chat_a = gr.Chatbot(label="A", height=320, feedback_options=None, elem_id="arena-a")
            chat_b = gr.Chatbot(label="B", height=320, feedback_options=None, elem_id="arena-b")
        arena_note = gr.Textbox(label="Arena status", interactive=False)
        arena_msg = gr.Textbox(label="Arena message", placeholder="asked to both models")
        with gr.Row():
            ask_btn = gr.Button("Ask both", variant="primary")
            arena_stop = gr.Button("Stop", variant="stop")
            arena_clear = gr.Button("Clear")

    # handlers name every parameter: the names are what `gradio_client` users see in the API page
    # (the decoding settings' names: `with_decoding`)
    @user_errors
    @with_decoding
    def respond(model, message, history, system, stop, device, decoding_settings, request: gr.Request = None):
        settings = DecodingControls.settings(decoding_settings, stop=chat.parse_stop_list(stop))  # before the load
        if not (message or "").strip():
            raise ValueError("message is empty: type something to send")
        stopped = chat_stops.begin(request)
        loaded = ws.model(model, device=device)
        for shown, info in _stream(loaded, plain(history), message, settings, system, stopped):
            yield shown, "", info

    @user_errors
    @with_decoding
    def regenerate(model, history, ratings_, system, stop, device, decoding_settings, request: gr.Request = None):
        """Answer the last message again with the next seed (the seed box shows it)."""
        history, message = chat.take_back(plain(history))
        if not message:
            raise ValueError("nothing to regenerate yet: send a message first")
        settings = DecodingControls.settings(decoding_settings, stop=chat.parse_stop_list(stop))
        settings = settings.with_(seed=settings.seed + 1)
        stopped = chat_stops.begin(request)
        loaded = ws.model(model, device=device)
        ratings_ = _prune(ratings_, len(history))
        for shown, info in _stream(loaded, history, message, settings, system, stopped):
            yield shown, info, settings.seed, ratings_

    def undo(history, ratings_):
        """Take back the last exchange; its message returns to the box for editing."""
        history, text = chat.take_back(plain(history))
        return history, text, _prune(ratings_, len(history))

    def clear():
        return [], "", {}, ""

    def rate(ratings_, data: gr.LikeData):
        index = data.index if isinstance(data.index, int) else (data.index or [None])[0]  # client-sent
        # a second click on the same thumb takes the rating back (liked is then neither True nor False)
        return rate_reply(ratings_, index, {True: 1, False: -1}.get(data.liked, 0))

    @user_errors
    def rate_reply(ratings_, index, rating):
        """Rate the assistant message at `index` of the history: 1 (up), -1 (down) or 0 (no rating)."""
        if rating not in (-1, 0, 1):
            raise ValueError(f"rating must be 1, -1 or 0, got {rating}")
        if not isinstance(index, (int, float)) or int(index) < 0:
            raise ValueError(f"index must be >= 0 (an assistant message's position in the history), got {index}")
        ratings_ = dict(ratings_ or {})
        if rating:
            ratings_[int(index)] = int(rating)
        else:
            ratings_.pop(int(index), None)
        return ratings_

    @user_errors
    def save(history, ratings_, model, system, file_name, conv_id):
        path, conv_id, n = chat.save_conversation(plain(history), ratings_, model=ws.model_id(model), system=system,
                                                  conversation_id=conv_id, path=chat.chat_file(file_name))
        return f"{n} exchange(s) of conversation {conv_id} saved in {chat.CHATS_DIR}/{path.name}", conv_id

    @user_errors
    @with_decoding
    def arena(model_a, model_b, message, history_a, history_b, system, stop, device, decoding_settings,
              decoding=ARENA_DECODING[0], request: gr.Request = None):
        settings = DecodingControls.settings(decoding_settings, stop=chat.parse_stop_list(stop))
        if not (message or "").strip():
            raise ValueError("message is empty: type something to send")
        if decoding not in ARENA_DECODING:
            raise ValueError(f"decoding must be one of {list(ARENA_DECODING)}, got {decoding!r}")
        # both names are checked before either model loads
        named = [ws.model_id(m, field) for m, field in ((model_a, "model a"), (model_b, "model b"))]
        own = decoding == ARENA_DECODING[0]
        sides = [models.default_decoding(m).with_(stop=settings.stop) if own else settings for m in named]
        stopped = arena_stops.begin(request)
        a, b = (ws.model(m, device=device, field=field) for m, field in zip(named, ("model a", "model b")))
        streams = [_stream(m, plain(h), message, side, system, stopped)
                   for m, h, side in ((a, history_a, sides[0]), (b, history_b, sides[1]))]
        for (shown_a, info_a), (shown_b, info_b) in chat.interleave(*streams):
            yield shown_a, shown_b, "", f"A: {info_a}  |  B: {info_b}"

    decoding_inputs = [system, stop_text, device, *dec.inputs]
    dec.follow(model, ws, note, api_name="chat_defaults")
    on([send_btn.click, message.submit], respond, [model, message, chatbot, *decoding_inputs],
       [chatbot, message, note], status=note, api_name="chat", concurrency_id=MODEL_QUEUE)
    on(regen_btn.click, regenerate, [model, chatbot, ratings, *decoding_inputs],
       [chatbot, note, dec.seed, ratings], status=note, api_name="regenerate", concurrency_id=MODEL_QUEUE)
    stop_btn.click(chat_stops.stop, None, None, api_name="stop_chat", queue=False)
    undo_btn.click(undo, [chatbot, ratings], [chatbot, message, ratings], api_name="undo", queue=False)
    clear_btn.click(clear, None, [chatbot, note, ratings, conversation_id], api_name="clear_chat", queue=False)
    chatbot.clear(clear, None, [chatbot, note, ratings, conversation_id], api_visibility="private", queue=False)
    chatbot.like(rate, ratings, ratings, api_visibility="private", queue=False)
    with gr.Row(visible=False):  # the thumbs as an API endpoint: a script rates replies too
        rate_index, rate_value = gr.Number(precision=0), gr.Number(precision=0)
        rate_btn = gr.Button()
    rate_btn.click(rate_reply, [ratings, rate_index, rate_value], ratings, api_name="rate_reply", queue=False)
    on(save_btn.click, save, [chatbot, ratings, model, system, file_name, conversation_id], [saved, conversation_id],
       status=saved, api_name="save_chat")
    on([ask_btn.click, arena_msg.submit], arena,
       [model_a, model_b, arena_msg, chat_a, chat_b, *decoding_inputs, arena_decoding],
       [chat_a, chat_b, arena_msg, arena_note], status=arena_note, api_name="arena", concurrency_id=MODEL_QUEUE)
    arena_stop.click(arena_stops.stop, None, None, api_name="stop_arena", queue=False)
    arena_clear.click(lambda: ([], [], ""), None, [chat_a, chat_b, arena_note], api_name="clear_arena", queue=False)
