// Parses PromQL with Prometheus's own grammar (npm @prometheus-io/lezer-promql) and lists the
// series selectors of each expression: metric name and label matchers.
//
// stdin: a JSON array of expressions. stdout: a JSON array, one entry per expression:
//   {"expr": "...", "error": null | "where it fails to parse",
//    "selectors": [{"metric": "http_requests_total", "matchers": [["job", "=", "comments"], ...]}]}
// Usage: node promql_selectors.mjs NODE_MODULES_PARENT < exprs.json
// NODE_MODULES_PARENT is the directory whose node_modules hold the parser (.tools/node).

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';

const require = createRequire(join(resolve(process.argv[2] ?? '.'), 'x.js'));
const { parser } = require('@prometheus-io/lezer-promql');

const unquote = (s) => JSON.parse(s.startsWith("'") ? `"${s.slice(1, -1).replace(/"/g, '\\"')}"` : s);

function selectors(expr) {
  const tree = parser.parse(expr);
  const found = [];
  let error = null;
  tree.iterate({
    enter(node) {
      if (node.type.isError && error === null) {
        error = `syntax error at ${node.from}: ${JSON.stringify(expr.slice(node.from, node.from + 30))}`;
      }
      if (node.name !== 'VectorSelector') return;
      const selector = { metric: null, matchers: [] };
      const cursor = node.node.cursor();
      if (cursor.firstChild()) {
        do {
          if (cursor.name === 'Identifier') selector.metric = expr.slice(cursor.from, cursor.to);
          if (cursor.name === 'LabelMatchers') {
            for (const m of cursor.node.getChildren('UnquotedLabelMatcher')) {
              const part = (name) => {
                const n = m.getChild(name);
                return n && expr.slice(n.from, n.to);
              };
              selector.matchers.push([part('LabelName'), part('MatchOp'), unquote(part('StringLiteral'))]);
            }
          }
        } while (cursor.nextSibling());
      }
      found.push(selector);
    },
  });
  return { expr, error, selectors: found };
}

const exprs = JSON.parse(readFileSync(0, 'utf8'));
process.stdout.write(JSON.stringify(exprs.map(selectors)));
