// A unified diff, file by file, with the lines coloured and a light syntax highlight
// (keywords, strings, comments, numbers) done with text nodes only.

import { h } from "./dom.js";

const KEYWORDS = new Set(
  ("and as assert async await break case catch class const continue def default del do elif else except export extends false " +
    "finally fn for from func function go if impl import in interface is let match mod new nil none not null or package pass pub " +
    "raise return self static struct super switch this throw true try type typeof use var void while with yield").split(" "),
);
const TOKEN = /(#.*$|\/\/.*$)|("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`(?:[^`\\]|\\.)*`)|(\b\d[\d_.]*\b)|([A-Za-z_][A-Za-z0-9_]*)/g;

function highlight(text) {
  const out = [];
  let last = 0;
  for (const match of text.matchAll(TOKEN)) {
    const [whole, comment, string, number, word] = match;
    if (word && !KEYWORDS.has(word)) continue;
    if (match.index > last) out.push(text.slice(last, match.index));
    const cls = comment ? "hl-c" : string ? "hl-s" : number ? "hl-n" : "hl-k";
    out.push(h("span", { class: cls }, whole));
    last = match.index + whole.length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

export function diffView(diff) {
  const wrap = h("div", { class: "diff-view" });
  wrap.append(h("p", { class: "muted small" }, `${diff.files.length} file${diff.files.length === 1 ? "" : "s"} changed, +${diff.added} −${diff.removed} · ${diff.base_sha.slice(0, 10)}..${diff.head_sha.slice(0, 10)}`));
  for (const file of diff.files) {
    const table = h("table", { class: "diff" });
    for (const line of file.lines) {
      const sign = line[0];
      const cls = sign === "+" ? "add" : sign === "-" ? "del" : sign === "@" ? "hunk" : "ctx";
      table.append(h("tr", { class: cls }, h("td", { class: "sign" }, sign === "@" ? "" : sign), h("td", { class: "code" }, cls === "hunk" ? line : highlight(line.slice(1)))));
    }
    wrap.append(
      h(
        "details",
        { class: "diff-file", open: true, "data-path": file.path },
        h("summary", {}, h("span", { class: "mono" }, file.path), " ", h("span", { class: "add-n" }, `+${file.added}`), " ", h("span", { class: "del-n" }, `−${file.removed}`), file.binary ? " (binary)" : "", file.truncated ? " (cut short)" : ""),
        table,
      ),
    );
  }
  if (diff.truncated) wrap.append(h("p", { class: "muted" }, "The diff is longer than the board shows; the branch holds all of it."));
  return wrap;
}
