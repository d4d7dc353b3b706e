// Parses LogQL and TraceQL with Grafana's own Lezer grammars, the ones its query
// editors use (@grafana/lezer-logql, @grafana/lezer-traceql).
//
// stdin:  JSON list of {"lang": "logql" | "traceql", "where": "...", "query": "..."}
// stdout: JSON list, same order, of {"where", "lang", "ok", "errors": [...]}; an
//         error is {"from", "to", "near"} for each error node ("⚠") in the tree.
// Exit status 0 when every query parsed, 1 when one did not, 2 on bad input.
//
// Lezer parsers recover from errors instead of throwing: a query is rejected when
// its tree holds an error node (an empty query is one too).
import { parser as logql } from "@grafana/lezer-logql";
import { parser as traceql } from "@grafana/lezer-traceql";

const PARSERS = { logql, traceql };

function parse(lang, query) {
  const parser = PARSERS[lang];
  if (!parser) {
    throw new Error(`unknown language ${JSON.stringify(lang)} (accepted: ${Object.keys(PARSERS).join(", ")})`);
  }
  const tree = parser.parse(query);
  const errors = [];
  tree.iterate({
    enter(node) {
      if (node.type.isError) {
        errors.push({ from: node.from, to: node.to, near: query.slice(Math.max(0, node.from - 15), node.to + 15) });
      }
    },
  });
  return errors;
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

try {
  const items = JSON.parse(await readStdin());
  const results = items.map(({ lang, where, query }) => {
    const errors = parse(lang, query);
    return { where, lang, ok: errors.length === 0, errors };
  });
  process.stdout.write(JSON.stringify(results));
  process.exitCode = results.every((r) => r.ok) ? 0 : 1;
} catch (err) {
  process.stderr.write(`parse.mjs: ${err.message}\n`);
  process.exitCode = 2;
}
