import { summarize, type CheckResult } from './run.js';

/** The results as a table for a terminal: one line per probe, failures with what was found. */
export function resultTable(results: CheckResult[]): string {
  const mark = { passed: 'ok  ', failed: 'FAIL', skipped: 'skip' } as const;
  const width = Math.min(60, Math.max(5, ...results.map((r) => `${r.check}: ${r.attribute}`.length)));
  const lines = results.map((r) => {
    const what = `${r.check}: ${r.attribute}`.padEnd(width);
    const detail = r.status === 'failed' ? `found ${r.observed}, expected ${r.expected} (${r.location})` : r.status === 'skipped' ? r.reason ?? '' : r.observed ?? '';
    return `${mark[r.status]}  ${what}  ${detail}`.trimEnd();
  });
  const { passed, failed, skipped } = summarize(results);
  return [...lines, `${passed} passed, ${failed} failed, ${skipped} skipped`].join('\n');
}

const xml = (text: string) => text.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!).replace(/[^\x09\x0a\x0d\x20-\uD7FF\uE000-\uFFFD]/g, '');

/** JUnit XML (the form Jenkins, GitLab and GitHub's test reporters read): one testcase per probe. */
export function junitXml(results: CheckResult[], suiteName: string, durationMs: number): string {
  const { failed, skipped } = summarize(results);
  const cases = results.map((r) => {
    const open = `    <testcase classname="${xml(`imagebuilder.${r.type}`)}" name="${xml(`${r.check}: ${r.attribute}`)}" file="${xml(r.location)}">`;
    const body = r.status === 'failed'
      ? `\n      <failure message="${xml(`found ${r.observed}, expected ${r.expected}`)}">${xml(`${r.location}: found ${r.observed}, expected ${r.expected}`)}</failure>\n    `
      : r.status === 'skipped' ? `\n      <skipped message="${xml(r.reason ?? '')}"/>\n    ` : '';
    return `${open}${body}</testcase>`;
  });
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    `<testsuites tests="${results.length}" failures="${failed}" skipped="${skipped}" time="${(durationMs / 1000).toFixed(3)}">`,
    `  <testsuite name="${xml(suiteName)}" tests="${results.length}" failures="${failed}" skipped="${skipped}" time="${(durationMs / 1000).toFixed(3)}">`,
    ...cases,
    '  </testsuite>',
    '</testsuites>',
    '',
  ].join('\n');
}
