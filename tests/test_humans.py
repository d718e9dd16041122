"""The agent's prompt and the simulated human's prompt and reply cleaning."""

from simulators.domain import Episode, Task, Turn
from simulators.humans import BACKEND_REPLY_LIMIT, SimulatedHuman, clean_reply
from simulators.llm import load_model
from simulators.prompts import agent_messages

REFERENCE = "def shipping_cost(weight_kg, express):\n    base = 4.5 if weight_kg <= 2 else 9.0\n    return base * (2 if express else 1)"
TASK = Task(id="t1", kind="backend", problem_description="Compute shipping. The signature of the function is: "
            "def shipping_cost(weight_kg, express)", ground_truth=REFERENCE,
            test_cases={f"test{i}": f"shipping_cost({i}, True)" for i in range(10)})


def episode_after_question() -> Episode:
    return Episode(task=TASK, turns=[Turn("human", TASK.problem_description),
                                     Turn("agent", "What is the weight threshold?")])


def test_agent_sees_its_instructions_then_the_dialogue_with_chat_roles():
    messages = agent_messages(episode_after_question(), max_rounds=7)
    assert messages[0]["role"] == "system" and "at most 7 messages" in messages[0]["content"]
    assert "I WANT TO ANSWER:" in messages[0]["content"]
    assert [m["role"] for m in messages[1:]] == ["user", "assistant"]
    assert messages[1]["content"] == TASK.problem_description


def test_simulator_sees_hidden_reference_with_roles_flipped(tiny_model_dir):
    messages = SimulatedHuman(load_model(str(tiny_model_dir))).messages(episode_after_question())
    assert messages[0]["role"] == "system" and REFERENCE in messages[0]["content"]
    assert messages[1:] == [{"role": "user", "content": "What is the weight threshold?"}]


def test_clean_reply_removes_code_and_leaks_and_keeps_two_sentences():
    raw = ("Human: It is 2 kg. Express doubles it. Also note the rest.\n```python\ndef f(): pass\n```\n"
           "    base = 4.5 if weight_kg <= 2 else 9.0\n")
    cleaned = clean_reply(raw, limit=BACKEND_REPLY_LIMIT, hidden=REFERENCE, max_sentences=2)
    assert cleaned == "It is 2 kg. Express doubles it."


def test_clean_reply_caps_length_and_never_returns_empty():
    assert len(clean_reply("word " * 500, limit=400)) <= 400
    assert clean_reply("```\nonly code\n```", limit=400) == "I don't know."
    assert clean_reply("<html><body>x</body></html>", limit=1000) == "I don't know."
