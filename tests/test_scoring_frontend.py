"""Frontend scoring: HTML extraction, CIEDE2000, block matching, design metrics on real renders,
the difference report, episode scoring and the task self-check."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from simulators.domain import Episode, Task, Turn
from simulators.render import Renderer
from simulators.scoring import clip
from simulators.scoring.answers import extract_html
from simulators.scoring.colors import ciede2000, color_similarity, describe_color, srgb_to_lab
from simulators.scoring.design import design_scores, min_cost_assignment
from simulators.scoring.differences import describe_differences
from simulators.scoring.frontend import (
    FRONTEND_SCORE_KEYS,
    NO_HTML_ERROR,
    check_tasks,
    reference_cache,
    reference_render,
    score_episodes,
)
from simulators.tasks import load_sample_tasks, load_tasks

SHARED_COLBENCH = Path(__file__).resolve().parents[2] / "shared" / "colbench"
TAILWIND_V2 = '<link href="https://cdn.jsdelivr.net/npm/tailwindcss@2.2.19/dist/tailwind.min.css" rel="stylesheet">'
NO_CLIP = (None, "CLIP weights not provided in this test")

PAGE = f"""<html>
{TAILWIND_V2}
<body class="bg-gray-100">
  <header class="bg-green-500 text-white p-4"><h1 class="text-3xl font-bold">Green Grocer</h1></header>
  <nav class="bg-white p-4"><ul class="flex space-x-4">
    <li><a href="#" class="text-green-600">Fruit</a></li><li><a href="#" class="text-green-600">Vegetables</a></li>
  </ul></nav>
  <main class="p-4 flex space-x-8">
    <div class="w-1/2"><h2 class="text-2xl font-bold">Fresh every day</h2><p>Delivered from local farms each morning.</p></div>
    <div class="w-1/2"><h2 class="text-2xl font-bold">Order online</h2><p>Pick up your basket after work.</p></div>
  </main>
  <footer class="bg-green-500 text-white p-4"><p>Open daily, 8am to 8pm.</p></footer>
</body>
</html>"""


@pytest.fixture(scope="module")
def renderer():
    with Renderer() as r:
        yield r


@pytest.fixture(scope="module")
def reference(renderer):
    result = renderer.render(PAGE)
    assert result.ok, result.error
    return result


def render_variant(renderer, html):
    result = renderer.render(html)
    assert result.ok, result.error
    return result


# -- extract_html ---------------------------------------------------------------------------


def test_extract_html_takes_the_first_html_block():
    message = "Here it is:\n```html\n<html><body><p>one</p></body></html>\n```\nand <html><p>two</p></html>"
    assert extract_html(message) == "<html><body><p>one</p></body></html>"


def test_extract_html_prefers_html_over_an_earlier_body_and_ignores_case():
    message = "<body>draft</body> then the page: <HTML lang='en'><BODY>final</BODY></HTML>"
    assert extract_html(message) == "<HTML lang='en'><BODY>final</BODY></HTML>"


def test_extract_html_falls_back_to_body():
    assert extract_html('Try this <body class="p-4"><p>hi</p></body> ok?') == '<body class="p-4"><p>hi</p></body>'


@pytest.mark.parametrize("message", [None, "", "What colours do you like?", "<div>no page</div>", "<html><p>unclosed"])
def test_extract_html_returns_none_without_a_page(message):
    assert extract_html(message) is None


def test_extract_html_pins_random_images_like_colbench():
    message = (
        '<html><img src="https://source.unsplash.com/random/800x600/?city">'
        '<img src="https://picsum.photos/400/300"><img src="https://picsum.photos/id/12/50/50"></html>'
    )
    assert extract_html(message) == (
        '<html><img src="https://picsum.photos/id/48/800/600">'
        '<img src="https://picsum.photos/id/48/400/300"><img src="https://picsum.photos/id/12/50/50"></html>'
    )


# -- colour science -------------------------------------------------------------------------

# Sharma, Wu & Dalal (2005), "The CIEDE2000 color-difference formula", Table 1: all 34 pairs.
SHARMA_PAIRS = [
    ((50.0000, 2.6772, -79.7751), (50.0000, 0.0000, -82.7485), 2.0425),
    ((50.0000, 3.1571, -77.2803), (50.0000, 0.0000, -82.7485), 2.8615),
    ((50.0000, 2.8361, -74.0200), (50.0000, 0.0000, -82.7485), 3.4412),
    ((50.0000, -1.3802, -84.2814), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, -1.1848, -84.8006), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, -0.9009, -85.5211), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, 0.0000, 0.0000), (50.0000, -1.0000, 2.0000), 2.3669),
    ((50.0000, -1.0000, 2.0000), (50.0000, 0.0000, 0.0000), 2.3669),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0009), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0010), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0011), 7.2195),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0012), 7.2195),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0009, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0010, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0011, -2.4900), 4.7461),
    ((50.0000, 2.5000, 0.0000), (50.0000, 0.0000, -2.5000), 4.3065),
    ((50.0000, 2.5000, 0.0000), (73.0000, 25.0000, -18.0000), 27.1492),
    ((50.0000, 2.5000, 0.0000), (61.0000, -5.0000, 29.0000), 22.8977),
    ((50.0000, 2.5000, 0.0000), (56.0000, -27.0000, -3.0000), 31.9030),
    ((50.0000, 2.5000, 0.0000), (58.0000, 24.0000, 15.0000), 19.4535),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.1736, 0.5854), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.2972, 0.0000), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 1.8634, 0.5757), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.2592, 0.3350), 1.0000),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((63.0109, -31.0961, -5.8663), (62.8187, -29.7946, -4.0864), 1.2630),
    ((61.2901, 3.7196, -5.3901), (61.4292, 2.2480, -4.9620), 1.8731),
    ((35.0831, -44.1164, 3.7933), (35.0232, -40.0716, 1.5901), 1.8645),
    ((22.7233, 20.0904, -46.6940), (23.0331, 14.9730, -42.5619), 2.0373),
    ((36.4612, 47.8580, 18.3852), (36.2715, 50.5065, 21.2231), 1.4146),
    ((90.8027, -2.0831, 1.4410), (91.1528, -1.6435, 0.0447), 1.4441),
    ((90.9257, -0.5406, -0.9208), (88.6381, -0.8985, -0.7239), 1.5381),
    ((6.7747, -0.2908, -2.4247), (5.8714, -0.0985, -2.2286), 0.6377),
    ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
]


@pytest.mark.parametrize("lab1,lab2,expected", SHARMA_PAIRS)
def test_ciede2000_matches_sharma_reference_pairs(lab1, lab2, expected):
    assert ciede2000(lab1, lab2) == pytest.approx(expected, abs=5e-5)
    assert ciede2000(lab2, lab1) == pytest.approx(expected, abs=5e-5)


def test_srgb_to_lab_anchors():
    assert srgb_to_lab((255, 255, 255)) == pytest.approx((100.0, 0.0, 0.0), abs=1e-3)
    assert srgb_to_lab((0, 0, 0)) == pytest.approx((0.0, 0.0, 0.0), abs=1e-9)
    assert srgb_to_lab((255, 0, 0)) == pytest.approx((53.24, 80.09, 67.20), abs=0.02)


def test_color_similarity_and_names():
    assert color_similarity((16, 185, 129), (16, 185, 129)) == 1.0
    assert color_similarity((0, 0, 0), (255, 255, 255)) == 0.0
    assert 0.5 < color_similarity((16, 185, 129), (59, 130, 246)) < 0.8
    assert describe_color((59, 130, 246)) == "blue (#3b82f6)"
    assert describe_color((255, 255, 255)) == "white (#ffffff)"


# -- assignment ------------------------------------------------------------------------------


def test_min_cost_assignment_is_optimal_on_random_matrices():
    rng = np.random.default_rng(7)
    for _ in range(200):
        rows, cols = (int(v) for v in rng.integers(1, 7, size=2))
        cost = rng.random((rows, cols)).round(2)
        pairs = min_cost_assignment(cost)
        assert len(pairs) == min(rows, cols)
        assert len({r for r, _ in pairs}) == len(pairs) == len({c for _, c in pairs})
        if rows <= cols:
            best = min(sum(cost[r, p[r]] for r in range(rows)) for p in itertools.permutations(range(cols), rows))
        else:
            best = min(sum(cost[p[c], c] for c in range(cols)) for p in itertools.permutations(range(rows), cols))
        assert sum(cost[r, c] for r, c in pairs) == pytest.approx(best)


# -- design metrics on real renders ---------------------------------------------------------


def test_identical_pages_score_one_on_every_metric(reference):
    scores = design_scores(reference, reference)
    assert scores.as_scores() == {
        "design": 1.0,
        "design_block_match": 1.0,
        "design_text": 1.0,
        "design_position": 1.0,
        "design_color": 1.0,
    }
    assert scores.matched_blocks == scores.reference_blocks == 8


def test_changed_text_colour_lowers_only_the_colour_score(renderer, reference):
    answer = render_variant(renderer, PAGE.replace("text-green-600", "text-red-600"))
    scores = design_scores(answer, reference)
    assert scores.color < 0.95
    assert scores.block_match == scores.text == scores.position == 1.0


def test_moved_block_lowers_the_position_score(renderer, reference):
    answer = render_variant(renderer, PAGE.replace('<main class="p-4 flex space-x-8">', '<main class="p-4 pt-64 flex space-x-8">'))
    scores = design_scores(answer, reference)
    assert scores.position < 0.95
    assert scores.text == scores.color == 1.0


def test_edited_text_lowers_the_text_score(renderer, reference):
    answer = render_variant(renderer, PAGE.replace("Green Grocer", "Green Grocers Market"))
    scores = design_scores(answer, reference)
    assert 0.5 < scores.text < 1.0
    assert scores.color == 1.0


def test_missing_section_lowers_block_match(renderer, reference):
    answer = render_variant(renderer, PAGE.split("<main")[0] + "</body></html>")
    scores = design_scores(answer, reference)
    assert scores.block_match < 0.8
    assert (scores.matched_blocks, scores.reference_blocks) == (3, 8)


def test_failed_or_missing_answer_scores_zero(reference):
    assert design_scores(None, reference).overall == 0.0
    assert design_scores(None, reference).as_scores()["design_color"] == 0.0


def test_pages_without_text(renderer):
    blank = render_variant(renderer, '<html><body><div style="height:300px;background:#00f"></div></body></html>')
    texty = render_variant(renderer, "<html><body><p>words</p></body></html>")
    assert design_scores(blank, blank).overall == 1.0
    assert design_scores(blank, texty).overall == 0.0


# -- difference report ----------------------------------------------------------------------


def test_no_differences_for_identical_pages(reference):
    assert describe_differences(reference, reference) == []


def test_differences_name_colours_sections_and_layout(renderer, reference):
    recoloured = render_variant(renderer, PAGE.replace("bg-green-500", "bg-blue-500"))
    facts = describe_differences(recoloured, reference)
    assert "The <header> background is green (#10b981) in the target but blue (#3b82f6) in the current page." in facts
    assert any("<footer> background" in fact for fact in facts)

    no_footer = render_variant(renderer, PAGE.split("<footer")[0] + "</body></html>")
    facts = describe_differences(no_footer, reference)
    assert any(fact.startswith("The target has a <footer>") for fact in facts)
    assert any("Open daily, 8am to 8pm." in fact and "lacks" in fact for fact in facts)

    stacked = render_variant(renderer, PAGE.replace("p-4 flex space-x-8", "p-4"))
    facts = describe_differences(stacked, reference)
    assert '"Fresh every day" and "Order online" sit side by side in the target but are stacked in the current page.' in facts

    retitled = render_variant(renderer, PAGE.replace("Green Grocer", "Grean Grocer").replace("text-3xl", "text-base"))
    facts = describe_differences(retitled, reference)
    assert '"Grean Grocer" should read "Green Grocer".' in facts
    assert 'Text "Green Grocer" is larger in the target (30 px vs 16 px).' in facts


def test_differences_for_missing_or_broken_answers(reference):
    from simulators.render import RenderResult

    assert "no <html> or <body>" in describe_differences(None, reference)[0]
    broken = RenderResult(ok=False, error="page did not finish rendering within 10 s")
    assert describe_differences(broken, reference) == [
        "The agent's page could not be rendered: page did not finish rendering within 10 s."
    ]


# -- episodes and task checks ---------------------------------------------------------------


def frontend_task(html: str = PAGE, task_id: str = "test-grocer") -> Task:
    return Task(id=task_id, kind="frontend", problem_description="A grocery shop website.", ground_truth=html)


def episode_with_answer(answer: str | None, task: Task | None = None) -> Episode:
    task = task or frontend_task()
    return Episode(task=task, turns=[Turn(role="human", content=task.problem_description)], answer=answer)


def test_score_episodes_fills_design_scores_without_clip(renderer):
    perfect = episode_with_answer(f"Here you go!\n{PAGE}\nI WANT TO ANSWER")
    wrong = episode_with_answer(PAGE.replace("bg-green-500", "bg-red-500").replace("Green Grocer", "Red Grocer"))
    nothing = episode_with_answer("I am not sure what you want.")
    nothing.scores = {"rating": 4, "render_error": "stale value from an earlier scoring"}
    score_episodes([perfect, wrong, nothing], renderer=renderer, clip=NO_CLIP)

    assert perfect.scores["design"] == 1.0 and perfect.reward == 1.0
    assert 0.5 < wrong.reward < 1.0 and wrong.reward == wrong.scores["design"]
    assert nothing.reward == 0.0 and nothing.scores["render_error"] == NO_HTML_ERROR
    assert nothing.scores["rating"] == 4  # keys that are not frontend scores survive
    for episode in (perfect, wrong, nothing):
        assert "clip" not in episode.scores
        assert episode.scores["clip_unavailable"] == NO_CLIP[1]
        assert set(episode.scores) - {"rating"} <= set(FRONTEND_SCORE_KEYS)


def test_missing_clip_weights_give_a_clear_reason_and_no_clip_key(renderer, monkeypatch, tmp_path):
    monkeypatch.setenv(clip.WEIGHTS_ENV, str(tmp_path / "no-such-weights.bin"))
    monkeypatch.setattr(clip, "_default", None)
    episode = episode_with_answer(PAGE)
    score_episodes([episode], renderer=renderer)
    assert "clip" not in episode.scores
    reason = episode.scores["clip_unavailable"]
    assert "no-such-weights.bin" in reason and clip.WEIGHTS_ENV in reason and "--download" in reason
    assert episode.reward == episode.scores["design"] == 1.0


def test_reference_renders_are_cached_by_task_and_content(renderer):
    task = frontend_task(PAGE.replace("Green Grocer", "Cached Grocer"), task_id="test-cache")
    first = reference_render(task, renderer=renderer)
    assert reference_render(task, renderer=renderer) is first
    changed = Task(id=task.id, kind="frontend", problem_description="x", ground_truth=task.ground_truth + "<!-- v2 -->")
    assert reference_render(changed, renderer=renderer) is not first
    assert reference_cache.key(task) != reference_cache.key(changed)


def test_check_tasks_flags_a_reference_that_never_renders(renderer):
    good = frontend_task()
    hanging = frontend_task("<html><body><script>while (true) {}</script></body></html>", task_id="test-hang")
    fast = Renderer(pool_size=1, timeout_s=3)
    try:
        checks = check_tasks([good, hanging], renderer=fast, clip=NO_CLIP)
    finally:
        fast.close()
    assert [c.task_id for c in checks] == ["test-grocer", "test-hang"]
    assert checks[0].ok and checks[0].problems == []
    assert not checks[1].ok and "does not render" in checks[1].problems[0]


def test_sample_frontend_tasks_pass_the_self_check(renderer):
    tasks = load_sample_tasks("frontend")
    assert len(tasks) >= 10
    assert all(t.id.startswith("sample-frontend-") for t in tasks)
    checks = check_tasks(tasks, renderer=renderer, clip=NO_CLIP)
    assert [c.problems for c in checks if not c.ok] == []


def dev_tasks() -> list[Task]:
    path = SHARED_COLBENCH / "frontend_dev.jsonl"
    return load_tasks(path, kind="frontend").items if path.is_file() else load_sample_tasks("frontend")


@pytest.mark.slow
def test_dev_subset_self_check(renderer):
    tasks = dev_tasks()[:60]
    checks = check_tasks(tasks, renderer=renderer, clip=NO_CLIP)
    assert [(c.task_id, c.problems) for c in checks if not c.ok] == []


@pytest.mark.slow
def test_all_dev_tasks_self_check(renderer):
    tasks = dev_tasks()
    checks = check_tasks(tasks, renderer=renderer, clip=NO_CLIP)
    assert sum(c.ok for c in checks) == len(tasks), [(c.task_id, c.problems) for c in checks if not c.ok][:5]


def test_sample_file_is_colbench_layout():
    rows = [json.loads(line) for line in (Path(__file__).resolve().parents[1] / "assets" / "tasks" / "frontend_samples.jsonl").open()]
    assert all(set(row) == {"id", "kind", "problem_description", "ground_truth"} for row in rows)
    assert all(row["kind"] == "frontend" and TAILWIND_V2 in row["ground_truth"] for row in rows)
