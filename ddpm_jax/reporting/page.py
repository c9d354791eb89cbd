"""report.html: one self-contained page of a report (the table, the figures, each run's latest sample grid).

Every image is embedded as a base64 data URI, so the file opens in any browser, from anywhere, alone:
it can be mailed or attached to an issue without the PNGs beside it.
"""
import base64
import datetime
import html
import io
import os

import numpy as np
from PIL import Image

from ddpm_jax.reporting import runs as events
from ddpm_jax.run import images

CAPTIONS = {'loss.png': 'Training loss', 'metrics.png': 'Evaluation metrics against the training step',
            'schedules.png': 'Noise schedules', 'luminance.png': 'Luminance of the last evaluation\'s samples',
            'phema.png': 'Post-hoc EMA: metrics against σ_rel',
            'guidance.png': 'Classifier-free guidance: FID against w, the FID/IS and precision/recall trade-offs'}
# samples.png shows the grids the page already shows at full size.
SKIPPED = ('samples.png',)
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1500px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.scroll { overflow-x: auto; } .note { color: #555; } .warning { color: #a40; font-weight: 600; }
.grids { display: flex; flex-wrap: wrap; gap: 1.5em; }
figure { margin: 0 0 1.5em 0; } figcaption { font-weight: 600; margin-bottom: 0.4em; }
img { max-width: 100%; height: auto; } .grid img { image-rendering: pixelated; }
"""


def data_uri(png: bytes) -> str:
  """Returns the PNG bytes as a data: URI."""
  return 'data:image/png;base64,' + base64.b64encode(png).decode('ascii')


def grid_png(path: str) -> bytes:
  """Returns a sample grid's PNG, enlarged by nearest neighbour to images.GRID_MIN_WIDTH where it is narrower.

  Runs from before grids were enlarged wrote 146-px grids of 16-px samples.
  """
  with Image.open(path) as image:
    pixels = np.asarray(image.convert('RGB'))
  factor = images.upscale_factor(pixels.shape[1], images.GRID_MIN_WIDTH)
  if factor == 1:
    with open(path, 'rb') as f:
      return f.read()
  buffer = io.BytesIO()
  Image.fromarray(images.upscale(pixels, factor)).save(buffer, format='PNG')
  return buffer.getvalue()


def markdown_table_html(lines: list[str]) -> str:
  """Returns one markdown table (its '|' lines) as an HTML table; the first line is its header."""
  rows = [line.strip().strip('|').split('|') for line in lines]
  rows = [row for row in rows if not all(set(cell.strip()) <= set('-:') for cell in row)]  # the |---| line
  head = ''.join(f'<th>{html.escape(cell.strip())}</th>' for cell in rows[0]) if rows else ''
  body = ''.join('<tr>' + ''.join(f'<td>{html.escape(cell.strip())}</td>' for cell in row) + '</tr>'
                 for row in rows[1:])
  return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def table_html(markdown: str) -> str:
  """Returns table.md as HTML, in its order: each table, and each note line (warnings stand out)."""
  parts, table = [], []
  for line in markdown.splitlines() + ['']:  # the empty line ends a table that ends the file
    if line.startswith('|'):
      table.append(line)
      continue
    if table:
      parts.append(markdown_table_html(table))
      table = []
    if line.strip():
      parts.append(f'<p class="{"warning" if line.startswith("Warning") else "note"}">{html.escape(line)}</p>')
  return ''.join(parts)


def grids_html(runs: list[events.Run]) -> str:
  """Returns each run's latest sample grid as a captioned figure ('no sample grid' where it has none)."""
  cards = []
  for run in runs:
    caption = html.escape(run.name) + (f', step {run.grid_step:,}' if run.grid_path else '')
    content = (f'<img alt="samples of {html.escape(run.name)}" src="{data_uri(grid_png(run.grid_path))}">'
               if run.grid_path else '<p class="note">no sample grid</p>')
    cards.append(f'<figure class="grid"><figcaption>{caption}</figcaption>{content}</figure>')
  return f'<div class="grids">{"".join(cards)}</div>'


def figures_html(figure_paths: list[str]) -> str:
  """Returns the report's figures, each captioned and embedded."""
  parts = []
  for path in figure_paths:
    name = os.path.basename(path)
    if name in SKIPPED or not os.path.exists(path):
      continue
    with open(path, 'rb') as f:
      uri = data_uri(f.read())
    caption = html.escape(CAPTIONS.get(name, name.removesuffix('.png').replace('_', ' ')))
    parts.append(f'<figure><figcaption>{caption} ({html.escape(name)})</figcaption>'
                 f'<img alt="{html.escape(name)}" src="{uri}"></figure>')
  return ''.join(parts)


def write_page(path: str, runs: list[events.Run], table_markdown: str, figure_paths: list[str]) -> str:
  """Writes report.html at path (the table, each run's latest grid, the figures); returns the path."""
  title = f'ddpm_jax report: {len(runs)} run{"s" if len(runs) != 1 else ""}'
  stamp = datetime.datetime.now().isoformat(timespec='seconds')
  names = ', '.join(html.escape(run.name) for run in runs)
  page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
          f'<style>{STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1>'
          f'<p class="note">Written {stamp} by python -m ddpm_jax.report from {names}.</p>'
          f'<h2>Metrics</h2>{table_html(table_markdown)}<h2>Latest samples</h2>{grids_html(runs)}'
          f'<h2>Figures</h2>{figures_html(figure_paths)}</body></html>\n')
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(page)
  os.replace(tmp, path)
  return path
