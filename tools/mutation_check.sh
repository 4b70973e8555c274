#!/usr/bin/env bash
# Mutation check: does the test suite catch realistic bugs? Each mutant of tools/mutants.txt (a
# one-line bug: a lost block offset, a dropped tail, a swapped field, ...) is applied in turn to a
# scratch copy of the repository (a git worktree of HEAD: committed code only), st_tests is rebuilt
# incrementally and the mutant's test spec is run. A mutant is *caught* when st_tests exits
# non-zero (a failed check, a crash or the timeout), *not caught* when it passes, *invalid* when
# it does not compile. The source is restored after each mutant; the scratch copy and its build
# folder are kept between runs, and ccache shares objects with other builds, so a second run only
# rebuilds what the mutants touch.
#
# Not part of CI (a full run rebuilds and tests once per mutant: tens of minutes on two cores).
# docs/testing.md has the last run's table.
#
# Usage: tools/mutation_check.sh [options]
#   --list           list the mutants (id, file, test spec, description) and exit
#   --only ID,ID     run these mutants only (default: all)
#   --full           run the whole suite against each mutant, not each mutant's own spec: all
#                    of st_tests but the slowest or GPU-only tags, "~[teacher]~[hostile]~[cuda]"
#                    (the teacher's golden data is generated per run; the flood tests take
#                    minutes), or the spec in $ST_MUTATION_FULL_SPEC
#   --report FILE    also write the table as markdown to FILE
#   --mutants FILE   the mutant list (default: tools/mutants.txt)
#   --workdir DIR    scratch copy and build (default: ${TMPDIR:-/tmp}/st-mutation-$USER)
#   --jobs N         build jobs (default 2)
#   --timeout S      seconds allowed per test run (default 900)
#   --no-baseline    skip the run of each spec on the unmutated copy (which checks that the
#                    specs pass before any mutant is judged by them)
# Exit status: 0 when every mutant run was caught, 1 when one was not caught or invalid (or a
# baseline failed), 2 for a usage or setup error (e.g. a snippet that is not found exactly once).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mutants_file="$repo/tools/mutants.txt"
workdir="${TMPDIR:-/tmp}/st-mutation-${USER:-$(id -un)}"
only="" full=0 report="" jobs=2 timeout_s=900 list=0 baseline=1
full_spec="${ST_MUTATION_FULL_SPEC:-~[teacher]~[hostile]~[cuda]}"

die() { echo "mutation_check: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --list) list=1 ;;
    --only) only="${2:?--only needs ids}"; shift ;;
    --full) full=1 ;;
    --report) report="${2:?--report needs a file}"; shift ;;
    --mutants) mutants_file="${2:?--mutants needs a file}"; shift ;;
    --workdir) workdir="${2:?--workdir needs a folder}"; shift ;;
    --jobs) jobs="${2:?--jobs needs a number}"; shift ;;
    --timeout) timeout_s="${2:?--timeout needs seconds}"; shift ;;
    --no-baseline) baseline=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (--help lists them)" ;;
  esac
  shift
done
[[ -f "$mutants_file" ]] || die "no mutant list at $mutants_file"
if [[ -n "$report" && "$report" != /* ]]; then report="$PWD/$report"; fi

# The mutant list's parser and the patcher, in Python (the snippets hold every character C++ has).
#   mut list FILE                    -> id<TAB>file<TAB>spec<TAB>desc per mutant
#   mut check FILE ROOT ID...        -> exits 2 naming each mutant whose snippet is not found once
#   mut apply FILE ROOT ID           -> applies the mutant to ROOT/file
mut() {
  python3 - "$@" <<'PY'
import sys
cmd, path = sys.argv[1], sys.argv[2]

def parse(path):
    out, cur = [], None
    for n, raw in enumerate(open(path, encoding="utf-8").read().split("\n"), 1):
        if raw.startswith("#"):
            continue
        if not raw.strip():
            cur = None
            continue
        key, sep, val = raw.partition(": ")
        if not sep:
            sys.exit(f"{path}:{n}: expected 'key: value', got {raw!r}")
        if key == "id":
            cur = {"id": val, "pairs": [], "line": n}
            out.append(cur)
            continue
        if cur is None:
            sys.exit(f"{path}:{n}: '{key}:' outside an entry (an entry starts with 'id:')")
        val = val.replace("\\n", "\n")
        if key == "find":
            cur["pairs"].append([val, None])
        elif key == "replace":
            if not cur["pairs"] or cur["pairs"][-1][1] is not None:
                sys.exit(f"{path}:{n}: 'replace:' without its 'find:'")
            cur["pairs"][-1][1] = val
        elif key in ("file", "desc", "spec"):
            cur[key] = val
        else:
            sys.exit(f"{path}:{n}: unknown key '{key}'")
    ids = set()
    for m in out:
        for k in ("file", "desc", "spec"):
            if k not in m:
                sys.exit(f"{path}:{m['line']}: mutant {m['id']} has no '{k}:'")
        if not m["pairs"] or any(r is None for _, r in m["pairs"]):
            sys.exit(f"{path}:{m['line']}: mutant {m['id']} needs find:/replace: pairs")
        if m["id"] in ids:
            sys.exit(f"{path}:{m['line']}: mutant id {m['id']} twice")
        ids.add(m["id"])
    return {m["id"]: m for m in out}, [m["id"] for m in out]

def mutate(root, m):
    fn = f"{root}/{m['file']}"
    try:
        text = open(fn, encoding="utf-8").read()
    except OSError as e:
        return None, f"mutant {m['id']}: cannot read {m['file']}: {e.strerror}"
    for i, (f, r) in enumerate(m["pairs"], 1):
        c = text.count(f)
        if c != 1:
            return None, (f"mutant {m['id']}: snippet {i} found {c} times in {m['file']} "
                          f"(must be exactly once): {f!r}")
        text = text.replace(f, r)
    return text, None

muts, order = parse(path)
if cmd == "list":
    for i in order:
        m = muts[i]
        print("\t".join([i, m["file"], m["spec"], m["desc"]]))
elif cmd == "check":
    root, want = sys.argv[3], sys.argv[4:]
    bad = 0
    for i in want:
        if i not in muts:
            print(f"no mutant '{i}' in {path}", file=sys.stderr); bad = 1; continue
        _, err = mutate(root, muts[i])
        if err:
            print(err, file=sys.stderr); bad = 1
    sys.exit(2 if bad else 0)
elif cmd == "apply":
    root, i = sys.argv[3], sys.argv[4]
    text, err = mutate(root, muts[i])
    if err:
        sys.exit(err)
    open(f"{root}/{muts[i]['file']}", "w", encoding="utf-8").write(text)
PY
}

listing=$(mut list "$mutants_file") || die "bad mutant list"
if [[ $list == 1 ]]; then
  printf '%s\n' "$listing" | awk -F'\t' '{printf "%-30s %-36s %-40s %s\n", $1, $2, $3, $4}'
  exit 0
fi
declare -A m_file m_spec m_desc
ids=()
while IFS=$'\t' read -r id file spec desc; do
  ids+=("$id"); m_file[$id]=$file; m_spec[$id]=$spec; m_desc[$id]=$desc
done <<<"$listing"
if [[ -n "$only" ]]; then
  IFS=',' read -r -a ids <<<"$only"
  for id in "${ids[@]}"; do [[ -n "${m_file[$id]+x}" ]] || die "no mutant '$id' in $mutants_file"; done
fi

# ---- the scratch copy: a detached worktree of HEAD, its own build folder configured once
commit=$(git -C "$repo" rev-parse HEAD)
short=$(git -C "$repo" rev-parse --short HEAD)
src="$workdir/src"
mkdir -p "$workdir"
if [[ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]]; then
  echo "mutation_check: note: uncommitted changes are not tested (the copy is HEAD, $short)" >&2
fi
if [[ -e "$src/.git" ]]; then
  git -C "$src" checkout -q --detach "$commit"
  git -C "$src" reset -q --hard "$commit"
else
  git -C "$repo" worktree prune
  git -C "$repo" worktree add -q --detach "$src" "$commit"
fi
mut check "$mutants_file" "$src" "${ids[@]}" || die "fix the snippets above (nothing was run)"

export CCACHE_BASEDIR="$src"   # paths relative to the copy: objects shared with other builds
shared="${ST_SHARED_DIR:-$(cd "$repo/.." && pwd)/shared}"
build="$src/build"
if [[ ! -f "$build/CMakeCache.txt" ]]; then
  launch=()
  if command -v ccache >/dev/null; then
    launch=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache
            -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
  fi
  cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DST_SHARED_DIR="$shared" \
    -DST_SANITIZER_TESTS=OFF "${launch[@]}" >"$workdir/configure.log" 2>&1 ||
    die "configure failed: $workdir/configure.log"
fi
build_tests() { cmake --build "$build" -j "$jobs" --target st_tests >"$1" 2>&1; }
run_tests() {  # spec log -> exit status (ST_SKIP_EXIT unset: a skip must not end the run)
  local rc=0
  (cd "$build" && env -u ST_SKIP_EXIT timeout --kill-after=30 "$timeout_s" ./st_tests "$1" \
     --warn NoTests >"$2" 2>&1) || rc=$?
  return $rc
}
spec_of() { if [[ $full == 1 ]]; then echo "$full_spec"; else echo "${m_spec[$1]}"; fi; }

echo "mutation_check: ${#ids[@]} mutant(s) on $short, scratch copy $src" >&2
t0=$SECONDS
build_tests "$workdir/build-base.log" || die "the unmutated copy does not build: $workdir/build-base.log"
echo "mutation_check: unmutated build ready ($((SECONDS - t0)) s)" >&2

status=0
baseline_notes=()
if [[ $baseline == 1 ]]; then
  declare -A seen=()
  for id in "${ids[@]}"; do
    spec=$(spec_of "$id")
    [[ -n "${seen[$spec]+x}" ]] && continue
    seen[$spec]=1
    t=$SECONDS
    if run_tests "$spec" "$workdir/baseline.log"; then
      echo "mutation_check: baseline '$spec' passes ($((SECONDS - t)) s)" >&2
    else
      echo "mutation_check: BASELINE FAILS: '$spec' fails on the unmutated copy" \
           "($workdir/baseline.log); its mutants would read as caught" >&2
      baseline_notes+=("baseline '$spec' FAILS on the unmutated copy")
      status=1
    fi
  done
fi

rows=()
caught_n=0
for id in "${ids[@]}"; do
  file=${m_file[$id]}
  spec=$(spec_of "$id")
  log="$workdir/$id.log"
  t=$SECONDS
  mut apply "$mutants_file" "$src" "$id" || die "could not apply $id"
  if ! build_tests "$log.build"; then
    verdict="invalid (does not compile)"
    status=1
  else
    rc=0
    run_tests "$spec" "$log" || rc=$?
    if [[ $rc == 0 ]]; then verdict="NOT CAUGHT"; status=1
    elif [[ $rc == 124 || $rc == 137 ]]; then verdict="caught (timeout)"; caught_n=$((caught_n + 1))
    else verdict="caught (exit $rc)"; caught_n=$((caught_n + 1))
    fi
  fi
  git -C "$src" checkout -q -- "$file"
  secs=$((SECONDS - t))
  echo "mutation_check: $id: $verdict (${secs} s)" >&2
  rows+=("$id"$'\t'"${m_desc[$id]}"$'\t'"$verdict"$'\t'"$secs")
done
# Leave the copy's build matching the unmutated source (the next run starts from it).
build_tests "$workdir/build-base.log" || true

summary="$caught_n of ${#ids[@]} mutants caught"
echo
printf '%-30s  %-20s  %7s  %s\n' "id" "caught?" "seconds" "description"
for r in "${rows[@]}"; do
  IFS=$'\t' read -r id desc verdict secs <<<"$r"
  printf '%-30s  %-20s  %7s  %s\n' "$id" "$verdict" "$secs" "$desc"
done
echo "$summary (commit $short, $( [[ $full == 1 ]] && echo "spec '$full_spec'" || echo "each mutant's own spec"))"
for n in "${baseline_notes[@]}"; do echo "$n"; done

if [[ -n "$report" ]]; then
  {
    echo "Mutation check of commit \`$short\` ($commit), $(date -u '+%Y-%m-%d %H:%M UTC'):" \
         "$summary; tests run: $( [[ $full == 1 ]] && echo "\`st_tests \"$full_spec\"\`" ||
         echo "each mutant's spec (tools/mutants.txt)")."
    for n in "${baseline_notes[@]}"; do echo; echo "**$n**"; done
    echo
    echo "| id | description | caught? | seconds |"
    echo "|----|-------------|---------|--------:|"
    for r in "${rows[@]}"; do
      IFS=$'\t' read -r id desc verdict secs <<<"$r"
      echo "| \`$id\` | $desc | $verdict | $secs |"
    done
  } >"$report"
  echo "mutation_check: table written to $report" >&2
fi
exit $status
