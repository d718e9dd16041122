"""Chat glue: Gradio 6 message parts to text, and how agent messages are shown."""

from collab_app.messages import agent_markdown, message_text, to_model_messages


def test_message_text_joins_the_text_parts_of_gradio_6_content():
    assert message_text([{"type": "text", "text": "Hello "}, {"type": "file", "file": {"path": "x.png"}},
                         {"type": "text", "text": "there"}]) == "Hello there"
    assert message_text("plain") == "plain" and message_text(None) == ""
    history = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}, {"role": "assistant", "content": "Yo"}]
    assert to_model_messages(history, "Be brief.") == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Yo"}]


def test_a_frontend_page_is_shown_as_source_never_as_live_markup():
    text = 'A draft:\n<html><body><img src="https://picsum.photos/id/48/40/40"><script>x()</script></body></html>\nOk?'
    shown = agent_markdown(text, "frontend")
    assert shown.startswith("A draft:\n\n```html\n<html>") and "</html>\n```\n" in shown and shown.endswith("Ok?")
    unclosed = agent_markdown("Here: <body class='p-4'><h1>Hi", "frontend")  # a reply cut short
    assert unclosed.endswith("<h1>Hi\n```\n") and "```html\n<body" in unclosed
    assert agent_markdown("What colours do you like?", "frontend") == "What colours do you like?"


def test_a_backend_final_answer_is_fenced_as_python():
    shown = agent_markdown("I WANT TO ANSWER: def f(x):\n    return x", "backend")
    assert shown == "I WANT TO ANSWER:\n```python\ndef f(x):\n    return x\n```"
    fenced = "I WANT TO ANSWER:\n```python\ndef f(): pass\n```"
    assert agent_markdown(fenced, "backend") == fenced
