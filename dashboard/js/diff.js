// A line diff by longest common subsequence, for the history's before/after view:
// two columns of [line, '' | 'del' | 'add'], aligned on the lines both sides share.

export function lineDiff(a, b) {
  const n = a.length;
  const m = b.length;
  const dp = Array.from({ length: n + 1 }, () => new Int32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) dp[i][j] = a[i] === b[j] ? dp[i + 1][j + 1] + 1 : Math.max(dp[i + 1][j], dp[i][j + 1]);
  }
  const left = [];
  const right = [];
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) {
      left.push([a[i++], '']);
      right.push([b[j++], '']);
    } else if (j < m && (i >= n || dp[i][j + 1] >= dp[i + 1][j])) right.push([b[j++], 'add']);
    else left.push([a[i++], 'del']);
  }
  return [left, right];
}
