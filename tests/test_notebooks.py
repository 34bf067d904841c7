"""The exploration notebooks: committed clean, thin, and executed top to bottom on small data.

Each notebook runs in a fresh ``python3`` kernel of this interpreter (the
kernelspec ``ipykernel`` installs into the environment, or jupyter_client's
built-in fallback to ``sys.executable``) through papermill, with the values of
``SMALL_PARAMETERS`` injected after its ``parameters`` cell. A failing cell
fails the test with the cell's traceback.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
ALLOWED_IMPORTS = {"feedrec", "pipelines"} | set(sys.stdlib_module_names)

#: Small data, one epoch, small dims: all three notebooks in about 2 minutes on 2 cores.
SMALL_PARAMETERS = {
    "01_click_logs.ipynb": {"scale": "small", "compared_lengths": [5, 20, 50]},
    "02_train_evaluate.ipynb": {
        "scale": "small",
        "history_length": 10,
        "embedding_dim": 16,
        "feed_forward_dim": 16,
        "epochs": 1,
        # One model per comparison besides the main one (a training costs 10-20 s).
        "compared_lengths": [5],
        "compared_poolings": ["mean"],
        "compare_epochs": 1,
    },
    "03_attention.ipynb": {
        "scale": "small",
        "history_length": 10,
        "embedding_dim": 16,
        "epochs": 1,
        "num_users": 2,
    },
}


def _read(path: Path):
    import nbformat

    return nbformat.read(path, as_version=4)


def _ids(paths):
    return [path.name for path in paths]


def test_every_notebook_has_small_parameters():
    assert _ids(NOTEBOOKS) == sorted(SMALL_PARAMETERS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_committed_without_outputs(path):
    notebook = _read(path)
    assert "papermill" not in notebook.metadata, f"{path.name} was saved after a papermill run"
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], f"{path.name}: cell {index} has outputs; clear them"
        assert cell.execution_count is None, f"{path.name}: cell {index} has an execution count"
        assert "execution" not in cell.metadata, f"{path.name}: cell {index} has execution times"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_first_cell_holds_the_parameters(path):
    first = _read(path).cells[0]
    assert first.cell_type == "code" and "parameters" in first.metadata.get("tags", [])
    tree = ast.parse(first.source)
    names = set()
    for statement in tree.body:
        assert isinstance(statement, ast.Assign), f"{path.name}: parameters only assign values"
        ast.literal_eval(statement.value)  # plain values a user (or papermill) can replace
        names.update(target.id for target in statement.targets)
    # A misspelt name would be injected beside the real one and silently ignored.
    assert set(SMALL_PARAMETERS[path.name]) <= names
    papermill = pytest.importorskip("papermill", reason="pip install feedrec[notebooks]")
    # papermill parses each line itself (for `--help-notebook` and injection); an `=`
    # in a comment, for one, hides the parameter from it.
    assert set(papermill.inspect_notebook(str(path))) == names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_imports_only_feedrec_pipelines_and_the_standard_library(path):
    for cell in _read(path).cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                assert module.split(".")[0] in ALLOWED_IMPORTS, (
                    f"{path.name} imports {module}: notebook logic belongs in feedrec or pipelines"
                )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_readme_links_the_notebook(path):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"](notebooks/{path.name})" in readme


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_top_to_bottom(path, tmp_path):
    papermill = pytest.importorskip("papermill", reason="pip install feedrec[notebooks]")
    parameters = dict(SMALL_PARAMETERS[path.name], work_dir=str(tmp_path / "work"))
    executed = papermill.execute_notebook(
        str(path),
        str(tmp_path / path.name),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(tmp_path),  # the notebooks must not depend on the working directory
        progress_bar=False,
        log_output=False,
        start_timeout=180,
        execution_timeout=300,
    )
    code = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code)
    images = sum("image/png" in output.get("data", {}) for cell in code for output in cell.outputs)
    assert images >= 3, f"{path.name} drew {images} figure(s)"
