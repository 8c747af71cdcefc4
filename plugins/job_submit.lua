--[[
slurmgov submit-time GPU budget hook (Slurm job_submit/lua, tested on Slurm 22.05, Lua 5.1).

Install next to slurm.conf with JobSubmitPlugins=lua (`slurmgov hooks install`).  Its files
live in the same directory (the "hook dir") unless slurmgov_hook.conf says otherwise:

  slurmgov_snapshot.txt  budgets, written by slurmgov; read as data, never executed
  slurmgov_hook.conf     optional "key value" lines: snapshot_path, journal_path,
                         refusals_path, fail_policy (open|closed, when the snapshot is
                         unreadable), default_time_min
  slurmgov_journal.log   one line per admitted GPU job ("admit") and per priced change
                         ("modify"); "probe" lines for `slurmgov hooks check`
  slurmgov_refusals.log  one line per refusal (best effort, for metrics)

The formats, the price of every GPU request form and what the hook pins are specified in
plugins/SNAPSHOT_FORMAT.md (the one specification; tests/data/hook_prices.yaml holds the
request forms and prices that this file and slurmgov/slurm/gpu_request.py are tested on).

In short: every job that can hold GPUs is priced at its worst case in weighted GPU-seconds
(GPUs x array tasks x minutes x 60 x weight; --exclusive takes whole nodes) and admitted only
if the account's snapshot budget, minus what this hook admitted since the snapshot (read
back from the journal), covers it, and, for a user the snapshot caps in that account (a `user`
line), what their cap leaves them covers it too.  Every change to a job (slurm_job_modify) that can give it
more GPUs, nodes, tasks or time, or move it to another partition or account, is priced the
same way before it takes effect.

Safety: no network, no sleeps, no os.execute/io.popen, no load/loadstring/dofile.
All slurm.log_* calls pass data through "%s" (those functions run string.format).
Performance: the snapshot's accounts are kept as ONE sorted string searched by bisection,
not as a Lua table: slurmctld rebuilds slurm.jobs (a table per job) before every call, and
each garbage collection then marks everything this state keeps alive; a table of 10,000
accounts made every submission pay for marking it.  Capped users are kept the same way (a
second sorted string, one bisection per GPU submission).
--]]

local NO_VAL = 4294967294
local INFINITE = 4294967295
local NO_VAL16 = 65534
local INFINITE16 = 65535

local SNAPSHOT_NAME = "slurmgov_snapshot.txt"
local JOURNAL_NAME = "slurmgov_journal.log"
local HOOK_CONF_NAME = "slurmgov_hook.conf"
local REFUSALS_NAME = "slurmgov_refusals.log"

-- Directory of this script: Slurm loads it with luaL_loadfile, so source is "@/path/file".
local function script_dir()
	local info = debug and debug.getinfo and debug.getinfo(1, "S")
	local src = info and info.source or ""
	if string.sub(src, 1, 1) == "@" then
		local dir = string.match(string.sub(src, 2), "^(.*)/[^/]*$")
		if dir and dir ~= "" then return dir end
	end
	local conf = os.getenv("SLURM_CONF")
	if conf then
		local dir = string.match(conf, "^(.*)/[^/]*$")
		if dir and dir ~= "" then return dir end
	end
	return "/etc/slurm"
end

local HOOK_DIR = script_dir()

-- Survives between calls while slurmctld keeps this Lua state; never required for correctness.
slurmgov_state = slurmgov_state or { counter = 0, journal = nil }
math.randomseed(os.time() + math.floor((os.clock() * 1000000) % 1000000))

local function log_user(msg) slurm.log_user("%s", msg) end
local function log_info(msg) slurm.log_info("%s", msg) end

-- Printable text for messages: control characters become "?".
local function printable(s)
	return (string.gsub(tostring(s), "%c", "?"))
end

-- One journal/settle field: no TAB, CR or LF; empty -> "-".
local function field(s)
	if s == nil then return "-" end
	s = string.gsub(tostring(s), "[\t\r\n]", " ")
	if s == "" then return "-" end
	return s
end

local function fmt_gpuh(gpu_s)
	local s = string.format("%.2f", gpu_s / 3600)
	s = string.gsub(s, "(%.%d)0$", "%1")
	return s
end

-- Split on TAB with a plain find (data never becomes a pattern).
local function split_tabs(line)
	local out, pos = {}, 1
	while true do
		local i = string.find(line, "\t", pos, true)
		if not i then
			out[#out + 1] = string.sub(line, pos)
			return out
		end
		out[#out + 1] = string.sub(line, pos, i - 1)
		pos = i + 1
	end
end

local function parse_num(s)
	if type(s) ~= "string" then return nil end
	if string.match(s, "^%-?%d+%.?%d*$") or string.match(s, "^%-?%d+%.?%d*[eE][%-+]?%d+$")
	   or string.match(s, "^%-?%.%d+$") then
		local n = tonumber(s)
		if n and n == n and n ~= math.huge and n ~= -math.huge then return n end
	end
	return nil
end

local function parse_int(s)
	if type(s) == "string" and string.match(s, "^%d+$") then return tonumber(s) end
	return nil
end

local function read_file(path)
	local f, err = io.open(path, "r")
	if not f then return nil, err end
	local data = f:read("*a")
	f:close()
	if not data then return nil, "read failed" end
	return data
end

local function lines_of(data)
	local out = {}
	for line in string.gmatch(data, "([^\n]*)\n?") do
		if string.sub(line, -1) == "\r" then line = string.sub(line, 1, -2) end
		out[#out + 1] = line
	end
	-- gmatch yields a trailing empty match after the last newline
	if out[#out] == "" then out[#out] = nil end
	return out
end

-- Optional hook config: "key value" (whitespace separated, value = rest of line).
-- Read on every call (an admin's edit counts from the next job); parsed again only when the
-- text changed. Callers never modify the table returned.
local function read_hook_conf()
	local data = read_file(HOOK_DIR .. "/" .. HOOK_CONF_NAME) or ""
	local st = slurmgov_state
	if st.conf and st.conf_data == data then return st.conf end
	local conf = {
		snapshot_path = HOOK_DIR .. "/" .. SNAPSHOT_NAME,
		journal_path = HOOK_DIR .. "/" .. JOURNAL_NAME,
		refusals_path = HOOK_DIR .. "/" .. REFUSALS_NAME,
		fail_policy = "closed",
		default_time_min = 60,
		cpu_budgets = false,
	}
	st.conf, st.conf_data = conf, data
	for _, line in ipairs(lines_of(data)) do
		local key, value = string.match(string.gsub(line, "%s+#.*$", ""), "^%s*([%w_]+)%s+(.-)%s*$")
		if key and string.sub(line, 1, 1) ~= "#" then
			if key == "snapshot_path" or key == "journal_path" or key == "refusals_path" then
				if value ~= "" then conf[key] = value end
			elseif key == "fail_policy" then
				if value == "open" or value == "closed" then conf.fail_policy = value end
			elseif key == "default_time_min" then
				local n = parse_int(value)
				if n and n > 0 then conf.default_time_min = n end
			elseif key == "cpu_budgets" then
				conf.cpu_budgets = (value == "yes")
			end
		end
	end
	return conf
end

-- Accounts as ONE string of "\naccount<TAB><name><TAB><value>" records sorted by name (see
-- the header: a string costs the garbage collector nothing to mark, a 10,000-entry table does).
-- Names compare with Lua's "<" both when sorting and when searching, so the order only has to
-- be consistent (slurmctld runs in the C locale, where it is bytewise, as slurmgov writes it).

-- The packed form of the account lines of ``data`` when the fast scan found them out of order
-- or scattered: sorted, or nil and the duplicated name.
local function pack_accounts(data)
	local list = {}
	for name, val in string.gmatch(data, "\naccount\t([^\t\r\n]*)\t([^\t\r\n]*)") do
		list[#list + 1] = { name, val }
	end
	table.sort(list, function(a, b) return a[1] < b[1] end)
	local parts = {}
	for i, a in ipairs(list) do
		if i > 1 and list[i - 1][1] == a[1] then return nil, a[1] end
		parts[i] = "\naccount\t" .. a[1] .. "\t" .. a[2]
	end
	return table.concat(parts)
end

-- The rest of the record of ``name`` (after its TAB) in a packed string of sorted
-- "\n<kind><TAB><name><TAB><rest>" records whose "\n<kind><TAB>" is ``skip`` bytes long, or nil.
-- Bisection over byte positions: [lo, hi] always holds the start of name's record, if any.
local function lookup_record(packed, name, skip)
	local lo, hi = 1, #packed
	while lo <= hi do
		local mid = math.floor((lo + hi) / 2)
		local s = string.find(packed, "\n", mid, true)
		if not s or s > hi then
			hi = mid - 1
		else
			local tab = string.find(packed, "\t", s + skip, true)
			local nm = string.sub(packed, s + skip, tab - 1)
			if nm == name then
				local nl = string.find(packed, "\n", tab + 1, true)
				return string.sub(packed, tab + 1, (nl or 0) - 1)
			elseif nm < name then
				lo = s + 1
			else
				hi = s - 1
			end
		end
	end
	return nil
end

-- Available weighted GPU-seconds of account ``name`` in a packed account string, or nil.
local function lookup_account(packed, name)
	return tonumber(lookup_record(packed, name, 9)) -- after "\naccount\t"
end

-- A capped user's key among the snapshot's user records: "<account>:<uid>" (a uid has no ":").
local function user_key(account, uid)
	return account .. ":" .. tostring(uid)
end

-- The cap of user ``uid`` in ``account`` in a packed user string ("\nuser\t<account>:<uid>\t
-- <available>\t<cap>" records, sorted by key): available and cap in weighted GPU-seconds, or nil
-- where the user has no cap there. A table lookup's worth of work however many users are capped.
local function lookup_user(packed, account, uid)
	-- (nil: a parse kept from a hook before user lines, in a Lua state slurmctld kept across the upgrade)
	if packed == nil or packed == "" or account == nil or uid == nil then return nil end
	local rest = lookup_record(packed, user_key(account, uid), 6) -- after "\nuser\t"
	if not rest then return nil end
	local avail, cap = string.match(rest, "^([^\t]*)\t(.*)$")
	return tonumber(avail), tonumber(cap)
end

-- Budget of account ``name`` in snapshot ``snap`` (lookup_account), remembered for the
-- snapshot's life: a site's submissions come from a few hundred accounts at most, so the memo
-- stays small (it is emptied past 256 names, whatever names users try).
local function account_budget(snap, name)
	local memo = snap.budget_memo
	if not memo or snap.budget_memo_n >= 256 then
		memo = {}
		snap.budget_memo, snap.budget_memo_n = memo, 0
	end
	local b = memo[name]
	if b == nil then
		b = lookup_account(snap.accounts, name) or false
		memo[name] = b
		snap.budget_memo_n = snap.budget_memo_n + 1
	end
	return b or nil
end

-- Available weighted CPU-seconds of an account with a CPU budget, or nil (no CPU budget), memoized
-- for the snapshot's life as account_budget is.
local function cpu_budget(snap, name)
	if name == nil or snap == nil or snap.cpu_accounts == nil or snap.cpu_accounts == "" then return nil end
	local memo = snap.cpu_memo
	if not memo or snap.cpu_memo_n >= 256 then
		memo = {}
		snap.cpu_memo, snap.cpu_memo_n = memo, 0
	end
	local b = memo[name]
	if b == nil then
		b = tonumber(lookup_record(snap.cpu_accounts, name, 13)) or false -- after "\ncpu_account\t"
		memo[name] = b
		snap.cpu_memo_n = snap.cpu_memo_n + 1
	end
	return b or nil
end

-- One non-account key line into ``snap``; true if it is malformed.
local function parse_key_line(snap, line)
	local f = split_tabs(line)
	local key, bad = f[1], false
	if key == "serial" then
		snap.serial = parse_int(f[2]); bad = (snap.serial == nil or #f ~= 2)
		snap.serial_str = f[2]
	elseif key == "written" then
		snap.written = parse_num(f[2]); bad = (snap.written == nil or #f ~= 2)
	elseif key == "max_age_s" then
		snap.max_age_s = parse_num(f[2]); bad = (snap.max_age_s == nil or #f ~= 2)
	elseif key == "fail_policy" then
		bad = (#f ~= 2 or (f[2] ~= "open" and f[2] ~= "closed"))
		snap.fail_policy = f[2]
	elseif key == "default_time_min" then
		snap.default_time_min = parse_int(f[2])
		bad = (snap.default_time_min == nil or snap.default_time_min <= 0 or #f ~= 2)
	elseif key == "max_gpus_per_node" or key == "total_gpus" or key == "sockets_per_node"
	       or key == "journal_offset" then
		snap[key] = parse_int(f[2]); bad = (snap[key] == nil or #f ~= 2)
	elseif key == "default_weight" then
		snap.default_weight = parse_num(f[2])
		bad = (snap.default_weight == nil or snap.default_weight < 0 or #f ~= 2)
	elseif key == "weight" then
		local w = parse_num(f[3])
		bad = (#f ~= 3 or f[2] == "" or w == nil or w < 0)
		if not bad then snap.weights[f[2]] = w end
	elseif key == "operator_uid" then
		local u = parse_int(f[2])
		bad = (#f ~= 2 or u == nil)
		if not bad then snap.operators[u] = true end
	elseif key == "partition_gpus" then
		local n = parse_int(f[3])
		bad = (#f ~= 4 or f[2] == "" or n == nil)
		if not bad then snap.partition_gpus[f[2]] = { n = n, type = (f[4] ~= "-") and f[4] or nil } end
	elseif key == "partition_cpus" then
		local n, w = parse_int(f[3]), parse_num(f[4])
		bad = (#f ~= 4 or f[2] == "" or n == nil or w == nil or w < 0)
		if not bad then snap.partition_cpus[f[2]] = { n = n, w = w } end
	elseif key == "default_cpu_weight" then
		snap.default_cpu_weight = parse_num(f[2])
		bad = (snap.default_cpu_weight == nil or snap.default_cpu_weight < 0 or #f ~= 2)
	elseif key == "max_cpus_per_node" then
		snap.max_cpus_per_node = parse_int(f[2]); bad = (snap.max_cpus_per_node == nil or #f ~= 2)
	end
	return bad, key
end

-- Returns snapshot table, or nil and a reason. read_snapshot keeps the parse per rewrite.
-- One pass over the text; account lines (all but a dozen) are checked with a single match and
-- kept where they are: when they come sorted and together, as slurmgov writes them, the packed
-- string is a slice of the file.
local function parse_snapshot(data)
	local snap = {
		fail_policy = "closed", default_time_min = 60, sockets_per_node = 1,
		default_weight = 1.0, weights = {}, operators = {}, partition_gpus = {},
		default_cpu_weight = 1.0, partition_cpus = {},
	}
	local pos, n, i = 1, #data, 0
	local ended, first_acc, last_acc, prev, in_order = false, nil, nil, nil, true
	local users, cpu_accounts = {}, {}
	while pos <= n do
		local nl = string.find(data, "\n", pos, true) or (n + 1)
		local line = string.sub(data, pos, nl - 1)
		if string.byte(line, -1) == 13 then line = string.sub(line, 1, -2) end
		i = i + 1
		if ended then
			if line ~= "" then return nil, "no end line (incomplete write?)" end
		elseif i == 1 then
			if line ~= "slurmgov-snapshot\t1" then return nil, "not a version 1 slurmgov snapshot" end
		elseif line == "end" then
			ended = true
		elseif string.sub(line, 1, 8) == "account\t" then
			local name, val = string.match(line, "^account\t([^\t]+)\t([^\t]+)$")
			if not name or not parse_num(val) then return nil, "bad line " .. i .. " (account)" end
			if prev and not (prev < name) then in_order = false end
			if last_acc and last_acc ~= pos - 2 then in_order = false end -- not right after the last one
			first_acc = first_acc or pos
			last_acc, prev = nl - 1, name
		elseif string.sub(line, 1, 5) == "user\t" or line == "user" then
			-- user<TAB>account<TAB>uid<TAB>available<TAB>cap: a capped user (few; packed below)
			local acct, uid, avail, cap = string.match(line, "^user\t([^\t]+)\t([^\t]+)\t([^\t]+)\t([^\t]+)$")
			local u = parse_int(uid)
			if not acct or not u or u > 4294967295 or not parse_num(avail) or not parse_num(cap) then
				return nil, "bad line " .. i .. " (user)"
			end
			local uid_s = string.format("%d", u)
			users[#users + 1] = { user_key(acct, uid_s), acct, uid_s, avail .. "\t" .. cap }
		elseif string.sub(line, 1, 12) == "cpu_account\t" or line == "cpu_account" then
			-- cpu_account<TAB>account<TAB>available weighted CPU-seconds: an account with a CPU budget
			local name, val = string.match(line, "^cpu_account\t([^\t]+)\t([^\t]+)$")
			if not name or not parse_num(val) then return nil, "bad line " .. i .. " (cpu_account)" end
			cpu_accounts[#cpu_accounts + 1] = { name, val }
		elseif line ~= "" and string.sub(line, 1, 1) ~= "#" then
			local bad, key = parse_key_line(snap, line)
			if bad then return nil, "bad line " .. i .. " (" .. printable(key) .. ")" end
		end
		pos = nl + 1
	end
	if not ended then return nil, "no end line (incomplete write?)" end
	if not snap.serial or not snap.written or not snap.max_age_s then
		return nil, "missing serial, written or max_age_s"
	end
	if snap.sockets_per_node < 1 then snap.sockets_per_node = 1 end
	if not first_acc then
		snap.accounts = ""
	elseif in_order then
		snap.accounts = string.sub(data, first_acc - 1, last_acc) -- "\naccount\t..." records
	else
		local packed, dup = pack_accounts(data)
		if not packed then return nil, "duplicate account " .. printable(dup) end
		snap.accounts = packed
	end
	-- Capped users as one sorted string too (same reason as the accounts), looked up by bisection.
	table.sort(users, function(a, b) return a[1] < b[1] end)
	local parts = {}
	for k, u in ipairs(users) do
		if k > 1 and users[k - 1][1] == u[1] then
			return nil, "duplicate user " .. printable(u[2]) .. " " .. u[3]
		end
		parts[k] = "\nuser\t" .. u[1] .. "\t" .. u[4]
	end
	snap.users = table.concat(parts)
	-- Accounts with a CPU budget, one sorted string too ("" when none: CPU jobs pass untouched).
	table.sort(cpu_accounts, function(a, b) return a[1] < b[1] end)
	parts = {}
	for k, a in ipairs(cpu_accounts) do
		if k > 1 and cpu_accounts[k - 1][1] == a[1] then return nil, "duplicate cpu_account " .. printable(a[1]) end
		parts[k] = "\ncpu_account\t" .. a[1] .. "\t" .. a[2]
	end
	snap.cpu_accounts = table.concat(parts)
	return snap
end

local function read_snapshot(path)
	local f, err = io.open(path, "r")
	if not f then return nil, "cannot read " .. path .. ": " .. tostring(err) end
	-- Writers change the serial (line 2) with every rewrite and rename whole files into place,
	-- so the same path, serial and size mean the same snapshot: reuse its parse without
	-- reading the rest (a 10,000-account snapshot is ~300 KB).
	f:setvbuf("no") -- 64 bytes is all most calls read: no 4 KB buffer fill
	local head = f:read(64) or ""
	local size = f:seek("end")
	local serial = string.match(head, "^slurmgov%-snapshot\t1\r?\nserial\t(%d+)\r?\n")
	local c = slurmgov_state.snapshot
	if serial and c and c.path == path and c.serial == serial and c.size == size then
		f:close()
		return c.snap, c.err
	end
	f:seek("set", 0)
	local data = f:read("*a")
	f:close()
	if not data then return nil, "cannot read " .. path .. ": read failed" end
	local snap, perr = parse_snapshot(data)
	slurmgov_state.snapshot = { path = path, serial = serial, size = size, snap = snap, err = perr }
	return snap, perr
end

-- The journal, opened once per decision ("a+": created if missing, every write goes to the
-- end) both to read what was admitted since the snapshot and to append the decision's line.
local function open_journal(path)
	local f, err = io.open(path, "a+")
	if not f then return nil, tostring(err) end
	f:setvbuf("no") -- reads of exactly the new bytes, one write(2) per line: no stdio refills
	return { f = f, path = path }
end

local function close_journal(j)
	if j then j.f:close() end
end

-- The journal's field counts (plugins/SNAPSHOT_FORMAT.md, "Versions"): fields are only ever added
-- at the end; a line with more fields than its kind's newest count is read as that count.
local function nonneg(s)
	local n = parse_num(s)
	if n and n >= 0 then return n end
	return nil
end

local function is_key(s) return s ~= nil and string.match(s, "^[%w_.:%-]+$") ~= nil end

-- What one journal line (split_tabs) counts against a budget at once: the account and the
-- amount, or nil. An admit line counts its cost; a modify line its growth (what a change gives
-- back does not count: Slurm may still reject the change after this hook priced it, so only the
-- governor, once Slurm shows the job changed), or all of its new cost on the account a job
-- moves to. A line the governor refuses (slurmgov/slurm/journal.py: a wrong field count, a
-- number that is not plain, a bad token) counts nothing here either: what the hook subtracts
-- is what the governor holds.
local function journal_charge(t)
	local kind, n = t[1], #t
	if kind == "admit" and n >= 10 and n ~= 12 then -- 10, 11, 13 fields and on (12: never written)
		if not (nonneg(t[2]) and parse_int(t[3]) and is_key(t[4]) and parse_int(t[8]) and parse_int(t[9])) then
			return nil
		end
		if n >= 11 then -- 11 fields on: the array's task count
			local k = parse_int(t[11])
			if not k or k < 1 then return nil end
		end
		local cost = nonneg(t[7])
		if not cost then return nil end
		local cpu = 0
		if n >= 13 then -- 13 fields on: the CPU cost (weighted CPU-seconds) and CPUs
			cpu = nonneg(t[12])
			if not cpu or not parse_int(t[13]) then return nil end
		end
		return t[5], cost, t[6], cpu
	elseif kind == "modify" and n >= 17 and n ~= 18 and n ~= 19 then -- 17, 20 and on
		local new, old = nonneg(t[7]), nonneg(t[13])
		if not (nonneg(t[2]) and parse_int(t[3]) and is_key(t[4]) and new and parse_int(t[8]) and parse_int(t[9])
		        and string.find(t[11], "%S") and old and (t[15] == "0" or t[15] == "1") and is_key(t[16])
		        and parse_int(t[17])) then
			return nil
		end
		local cnew, cold = 0, 0
		if n >= 20 then -- 20 fields on: new and old CPU cost, CPUs
			cnew, cold = nonneg(t[18]), nonneg(t[19])
			if not (cnew and cold and parse_int(t[20])) then return nil end
		end
		if t[5] == t[12] then return t[5], math.max(0, new - old), t[6], math.max(0, cnew - cold) end
		return t[5], new, t[6], cnew
	end
	return nil
end

-- Sum of admitted costs per account that the snapshot does not yet include (admit lines, and
-- what modify lines add: a change's growth, or its whole new cost on the account it moved to),
-- as table account -> cost, and the same per user of an account (user_key -> cost, the job
-- owner's uid), read from journal ``j`` (open_journal). Notes in j.ends_nl whether
-- the journal ends with a whole line, when that is known without another read.
local function charged_since(snap, j)
	local st = slurmgov_state
	local f = j.f
	local mode, start
	if snap.journal_offset then
		mode, start = "offset", snap.journal_offset
	else
		mode, start = "serial", 0
	end
	local size = f:seek("end") or 0
	if size < start then start = 0 end -- journal rotated after the snapshot: all of it is new
	local c = st.journal
	-- per-user sums are kept only while the snapshot caps someone
	local per_user = (snap.users ~= nil and snap.users ~= "")
	if not c or c.path ~= j.path or c.mode ~= mode or c.serial ~= snap.serial_str
	   or c.start ~= start or size < c.offset or c.per_user ~= per_user
	   or c.csums == nil then -- (nil: kept from an older hook)
		c = { path = j.path, mode = mode, serial = snap.serial_str, start = start,
		      offset = start, sums = {}, usums = {}, csums = {}, per_user = per_user }
	end
	if size > c.offset then
		f:seek("set", c.offset)
		local data = f:read(size - c.offset) or ""
		-- Only whole lines: a line being appended right now is picked up next time.
		local last_nl = nil
		local p = 0
		while true do
			local i = string.find(data, "\n", p + 1, true)
			if not i then break end
			last_nl = i
			p = i
		end
		if last_nl then
			local chunk = string.sub(data, 1, last_nl)
			local sums, usums, csums = c.sums, c.usums, c.csums
			for line in string.gmatch(chunk, "([^\n]*)\n") do
				local t = split_tabs(line)
				if (mode == "offset" or t[3] == snap.serial_str) then
					local acct, add, uid, cadd = journal_charge(t)
					if acct then
						sums[acct] = (sums[acct] or 0) + add
						if cadd > 0 then csums[acct] = (csums[acct] or 0) + cadd end
						if c.per_user then
							local uk = user_key(acct, uid)
							usums[uk] = (usums[uk] or 0) + add
						end
					end
				end
			end
			c.offset = c.offset + last_nl
		end
	end
	-- Read up to its end, line by line: it ends with a newline (an empty journal does too).
	if size == 0 or (c.offset == size and c.offset > c.start) then j.ends_nl = true end
	st.journal = c
	return c.sums, c.usums, c.csums
end

-- "user alice (uid 1000)", or "uid 1000" where Slurm did not give the name.
local function user_words(name, uid)
	if type(name) == "string" and name ~= "" then
		return "user " .. printable(name) .. " (uid " .. tostring(uid) .. ")"
	end
	return "uid " .. tostring(uid)
end

-- What user ``uid``'s cap in ``account`` leaves them, given what the journal added since the
-- snapshot (usums), and the cap: nil where the user has no cap there. The lookup is remembered
-- for the snapshot's life, as account_budget's (emptied past 256 users).
local function user_left(snap, usums, account, uid)
	if account == nil or uid == nil or snap.users == nil or snap.users == "" then return nil end
	local key = user_key(account, uid)
	local memo = snap.user_memo
	if not memo or snap.user_memo_n >= 256 then
		memo = {}
		snap.user_memo, snap.user_memo_n = memo, 0
	end
	local got = memo[key]
	if got == nil then
		local avail, cap = lookup_user(snap.users, account, uid)
		got = avail and { avail, cap } or false
		memo[key] = got
		snap.user_memo_n = snap.user_memo_n + 1
	end
	if not got then return nil end
	return got[1] - (usums[key] or 0), got[2]
end

-- GPU entries of one TRES string: list of {type=<string|nil>, count=<number>}.
-- Accepts "gres:gpu:2", "gres:gpu:h100:2", "gres:gpu", "gres/gpu:h100:2", comma lists, and the
-- count after "=" ("gres/gpu=1", "gres/gpu:h100=1"): Slurm 23.11+ writes tres_per_task so.
local function gpu_entries(tres)
	local out = {}
	if type(tres) ~= "string" or tres == "" then return out end
	for item in string.gmatch(tres, "[^,]+") do
		local rest = nil
		if string.sub(item, 1, 5) == "gres:" or string.sub(item, 1, 5) == "gres/" then
			rest = string.sub(item, 6)
		end
		if rest then
			-- 24.11/26.05 tres_per_task: "gpu=1", "gpu:h100=1" (TRES style, count after "=").
			local head, eq = string.match(rest, "^([^=]*)=(.*)$")
			local parts = {}
			for p in string.gmatch(head or rest, "[^:]+") do parts[#parts + 1] = p end
			if parts[1] == "gpu" then
				local gtype, cnt = nil, nil
				local function count_of(s)
					local num, suf = string.match(s, "^(%d+)([kKmMgG]?)$")
					if not num then return nil end
					local n = tonumber(num)
					if suf == "k" or suf == "K" then n = n * 1024
					elseif suf == "m" or suf == "M" then n = n * 1048576
					elseif suf == "g" or suf == "G" then n = n * 1073741824 end
					return n
				end
				if eq then
					if #parts <= 2 then gtype, cnt = parts[2], count_of(eq) end
				elseif #parts == 1 then
					cnt = 1
				elseif #parts == 2 then
					cnt = count_of(parts[2])
					if not cnt then gtype, cnt = parts[2], 1 end
				else
					gtype, cnt = parts[2], count_of(parts[3])
				end
				if not cnt then return nil, "cannot parse GPU request " .. printable(item) end
				out[#out + 1] = { type = gtype, count = cnt }
			end
		end
	end
	return out
end

-- Number of array tasks from array_inx ("0-9", "1,3,5", "0-15:4", "0-99%10").
local function array_count(spec)
	if spec == nil or spec == "" then return 1 end
	local body = string.match(spec, "^([^%%]*)%%%d+$") or spec
	local seen, n, work = {}, 0, 0
	for item in string.gmatch(body, "[^,]+") do
		local a, b, s = string.match(item, "^(%d+)%-(%d+):(%d+)$")
		if not a then a, b = string.match(item, "^(%d+)%-(%d+)$"); s = "1" end
		if not a then a = string.match(item, "^(%d+)$"); b = a; s = "1" end
		if not a then return nil, "cannot parse array spec " .. printable(spec) end
		-- No valid task id has 10 digits (Slurm's MaxArraySize is at most 4000001), and one of
		-- 2^53 or more would never end the loop below (a + 1 == a in doubles).
		if #a > 9 or #b > 9 or #s > 9 then return nil, "array index too large in " .. printable(spec) end
		a, b, s = tonumber(a), tonumber(b), tonumber(s)
		if s < 1 or b < a then return nil, "bad array range " .. printable(item) end
		work = work + math.floor((b - a) / s) + 1
		if work > 5000000 then return nil, "array spec too large " .. printable(spec) end
		for i = a, b, s do
			if not seen[i] then seen[i] = true; n = n + 1 end
		end
	end
	if n == 0 then return nil, "empty array spec" end
	return n
end

-- A number Slurm set, or nil for its "not set"/"infinite": NO_VAL/INFINITE in 32-bit fields
-- (nodes, tasks, times: 65534 tasks is a count there), NO_VAL16/INFINITE16 in 16-bit ones.
local function set_num(v)
	if type(v) ~= "number" or v == NO_VAL or v == INFINITE then return nil end
	return v
end

local function set_num16(v)
	if type(v) ~= "number" or v == NO_VAL16 or v == INFINITE16 or v == NO_VAL or v == INFINITE then
		return nil
	end
	return v
end

-- Time limit as a view keeps it: nil (not given), "unlimited", or minutes.
local function time_of(v)
	if v == nil or v == NO_VAL then return nil end
	if v == INFINITE or v == 0 then return "unlimited" end
	return v
end

-- What prices a job, from a submission's job_desc.
local function desc_view(d)
	return {
		tres_per_node = d.tres_per_node, tres_per_job = d.tres_per_job,
		tres_per_task = d.tres_per_task, tres_per_socket = d.tres_per_socket,
		min_nodes = set_num(d.min_nodes), max_nodes = set_num(d.max_nodes),
		num_tasks = set_num(d.num_tasks), ntasks_per_node = set_num16(d.ntasks_per_node),
		sockets_per_node = set_num16(d.sockets_per_node), shared = set_num16(d.shared),
		time_limit = time_of(d.time_limit), partition = d.partition, array_inx = d.array_inx,
	}
end

-- The CPU fields of a submission, added to its view ``v`` only where CPUs are priced (an account
-- with a CPU budget): each job_desc field the hook reads is a call into slurmctld.
local function add_cpu_view(v, d)
	v.cpus_per_task, v.min_cpus, v.pn_min_cpus = set_num16(d.cpus_per_task), set_num(d.min_cpus), set_num16(d.pn_min_cpus)
	v.cpus_per_tres = d.cpus_per_tres
	return v
end

-- CPUs per GPU of a view's cpus_per_tres (--cpus-per-gpu: "gres:gpu:8" or "gres/gpu:8"), or nil.
local function cpus_per_gpu(tres)
	if type(tres) ~= "string" then return nil end
	local n = nil
	for item in string.gmatch(tres, "[^,]+") do
		local c = string.match(item, "^gres[:/]gpu:(%d+)$")
		if c then n = math.max(n or 0, tonumber(c)) end
	end
	return n
end

-- Partition records the job may run in (named ones, else the default partition).
local function job_partitions(wanted, part_list)
	local out = {}
	if type(part_list) ~= "table" then return out end
	if wanted and wanted ~= "" then
		local names = {}
		for n in string.gmatch(wanted, "[^,]+") do names[n] = true end
		for _, p in pairs(part_list) do
			if p.name and names[p.name] then out[#out + 1] = p end
		end
	else
		for _, p in pairs(part_list) do
			if p.flag_default == 1 or p.flag_default == true then out[#out + 1] = p end
		end
	end
	return out
end

-- Worst-case minutes for time ``tl`` (a view's time_limit) in partitions ``parts``, and
-- whether the job's own limit must be set to them (somewhere nothing else would bound it).
local function time_limit_min(tl, parts, default_time_min)
	local eff, maxt = nil, nil
	local unbounded = (#parts == 0)
	for _, p in ipairs(parts) do
		local d = set_num(p.default_time)
		local m = set_num(p.max_time)
		if d and d <= 0 then d = nil end
		if m and m <= 0 then m = nil end
		local e = d or m
		if e then eff = math.max(eff or 0, e) else unbounded = true end
		if m then maxt = math.max(maxt or 0, m) end
	end
	if tl == nil then
		if unbounded then return math.max(eff or 0, default_time_min), true end
		return eff, false
	end
	if tl == "unlimited" then
		if not maxt then
			return nil, false, "job has no time limit and its partition has no MaxTime; give --time"
		end
		return maxt, true -- pinned: an UNLIMITED job would otherwise pend, or run, past its price
	end
	return tl, false
end

-- Array tasks and the minutes priced (with whether the hook pins them), as both prices count
-- them; or nil, reason-code, message.
local function tasks_and_time(v, parts, default_time_min)
	local arr = v.tasks_in_array
	if not arr then
		local aerr
		arr, aerr = array_count(v.array_inx)
		if not arr then return nil, "bad_request", aerr end
	end
	local tl, pin_time, terr = time_limit_min(v.time_limit, parts, default_time_min)
	if not tl then return nil, "bad_time", terr end
	return arr, tl, pin_time
end

-- GPUs per node of an exclusive (whole-node) job and their type: the largest of the job's
-- partitions (snapshot partition_gpus lines), else max_gpus_per_node.
local function whole_node_gpus(parts, snap)
	local n, gtype = nil, nil
	local function w(t) return (t and snap.weights[t]) or snap.default_weight end
	for _, p in ipairs(parts) do
		local g = snap.partition_gpus[p.name]
		-- the most GPUs, and of two partitions with as many, the dearest (whatever their order)
		if g and (not n or g.n > n or (g.n == n and w(g.type) > w(gtype))) then n, gtype = g.n, g.type end
	end
	if n == nil then n = snap.max_gpus_per_node or 0 end
	return n, gtype
end

-- Worst-case price of a view: table p, or nil, reason-code, message.
--   p.any_gpu, p.gpus (per array task), p.weighted, p.per_node, p.nodes, p.max_nodes,
--   p.types, p.tasks, p.tl (minutes), p.pin_time, p.pin_nodes, p.cost (weighted GPU-s)
local function price(v, snap, part_list)
	local weights, default_weight = snap.weights, snap.default_weight
	local parts = job_partitions(v.partition, part_list)
	local min_nodes, max_nodes = v.min_nodes, v.max_nodes
	local nodes = math.max(min_nodes or 1, max_nodes or 1)
	local tpn = v.ntasks_per_node
	local tasks = v.num_tasks or (tpn and tpn * nodes) or 1
	local spn = v.sockets_per_node or snap.sockets_per_node

	local best, typeset, per_node_max = nil, {}, 0
	local function weight_of(t)
		if t and weights[t] then return weights[t] end
		return default_weight
	end
	local function consider(tres, mult, per_node_mult)
		local entries, err = gpu_entries(tres)
		if not entries then return err end
		if #entries == 0 then return nil end
		-- Slurm keeps one count per GPU type of a TRES string (--gpus-per-node=1 --gres=gpu:2
		-- asks for 2): the largest of repeated entries counts, once.
		local per_type, order = {}, {}
		for _, e in ipairs(entries) do
			local k = e.type or ""
			if per_type[k] == nil then order[#order + 1] = k end
			per_type[k] = math.max(per_type[k] or 0, e.count)
		end
		local g, w = 0, 0
		for _, k in ipairs(order) do
			local ty = (k ~= "") and k or nil
			if ty then typeset[ty] = true end
			g = g + per_type[k]
			w = w + per_type[k] * weight_of(ty)
		end
		if per_node_mult then per_node_max = math.max(per_node_max, g * per_node_mult) end
		local cand = { gpus = g * mult, weighted = w * mult }
		if not best or cand.weighted > best.weighted
		   or (cand.weighted == best.weighted and cand.gpus > best.gpus) then
			best = cand
		end
		return nil
	end
	local err = consider(v.tres_per_node, nodes, 1)
		or consider(v.tres_per_job, 1, (nodes == 1 and max_nodes == 1) and 1 or nil)
		or consider(v.tres_per_task, tasks, tpn)
		or consider(v.tres_per_socket, spn * nodes, spn)
	if err then return nil, "bad_request", err end

	-- --exclusive (or an OverSubscribe=EXCLUSIVE partition): Slurm hands the job every GPU of
	-- every node it gets, asked for or not.
	local whole = (v.shared == 0)
	for _, p in ipairs(parts) do
		if p.max_share == 0 then whole = true end
	end
	if whole then
		local gpn, ntype = whole_node_gpus(parts, snap)
		if gpn > 0 then
			local only = nil
			for t in pairs(typeset) do only = (only == nil) and t or false end
			local wtype = ntype or (only or nil)
			if wtype then typeset[wtype] = true end
			local cand = { gpus = gpn * nodes, weighted = gpn * nodes * weight_of(wtype) }
			if not best or cand.weighted > best.weighted then best = cand end
			per_node_max = math.max(per_node_max, gpn)
		end
	end
	if not best or best.gpus <= 0 then return { any_gpu = false } end

	local names = {}
	for t in pairs(typeset) do names[#names + 1] = t end
	table.sort(names)
	local arr, tl, pin_time = tasks_and_time(v, parts, snap.default_time_min)
	if not arr then return nil, tl, pin_time end
	-- Per-node (and whole-node) GPUs multiply by nodes: a job with no maximum node count
	-- could be spread wider than it paid for (-n 8 --gres=gpu:1 over 8 nodes).
	local pin_nodes = (max_nodes == nil) and (v.tres_per_node ~= nil or v.tres_per_socket ~= nil or whole)
	return {
		any_gpu = true, gpus = best.gpus, weighted = best.weighted, per_node = per_node_max,
		nodes = nodes, max_nodes = max_nodes, tasks = arr,
		types = (#names > 0) and table.concat(names, "+") or "-",
		tl = tl, pin_time = pin_time, pin_nodes = pin_nodes,
		cost = best.weighted * arr * tl * 60,
	}
end

-- Worst-case CPU price of a view, for an account with a CPU budget: table c, or nil,
-- reason-code, message (plugins/SNAPSHOT_FORMAT.md, "CPU cost").
--   c.cpus, c.weighted (per array task), c.nodes, c.tasks, c.tl, c.pin_time, c.pin_nodes,
--   c.cost (weighted CPU-seconds)
local function cpu_price(v, snap, part_list, gpus)
	local parts = job_partitions(v.partition, part_list)
	local max_nodes = v.max_nodes
	local nodes = math.max(v.min_nodes or 1, max_nodes or 1)
	local tpn = v.ntasks_per_node
	if tpn and tpn > 0 and v.num_tasks then nodes = math.max(nodes, math.ceil(v.num_tasks / tpn)) end
	local cpt = (v.cpus_per_task and v.cpus_per_task > 0) and v.cpus_per_task or 1
	local tasks = math.max(v.num_tasks or 0, tpn and tpn * nodes or 0, 1)
	local cpus = math.max(tasks * cpt, v.min_cpus or 0, (v.pn_min_cpus or 0) * nodes, nodes)
	local cpg = cpus_per_gpu(v.cpus_per_tres)
	if cpg then cpus = math.max(cpus, cpg * gpus) end -- --cpus-per-gpu x the GPUs priced
	local whole = (v.shared == 0)
	for _, p in ipairs(parts) do
		if p.max_share == 0 then whole = true end
	end
	local best, best_cpus = nil, nil
	local function consider(cpn, w)
		local c = cpus
		if whole then c = math.max(cpus, cpn * nodes) end
		local cand = c * w
		if not best or cand > best or (cand == best and c > best_cpus) then best, best_cpus = cand, c end
	end
	local pcs = snap.partition_cpus or {}
	for _, p in ipairs(parts) do
		local pc = pcs[p.name]
		if pc then consider(pc.n, pc.w) else consider(snap.max_cpus_per_node or 0, snap.default_cpu_weight or 1.0) end
	end
	if not best then consider(snap.max_cpus_per_node or 0, snap.default_cpu_weight or 1.0) end
	local arr, tl, pin_time = tasks_and_time(v, parts, snap.default_time_min)
	if not arr then return nil, tl, pin_time end
	return {
		cpus = best_cpus, weighted = best, nodes = nodes, tasks = arr, tl = tl, pin_time = pin_time,
		pin_nodes = (max_nodes == nil) and (whole or tpn ~= nil or v.pn_min_cpus ~= nil),
		cost = best * arr * tl * 60,
	}
end

local function new_token()
	slurmgov_state.counter = (slurmgov_state.counter or 0) + 1
	return string.format("%d-%d-%04x", os.time(), slurmgov_state.counter, math.random(0, 65535))
end

-- Append one line to journal ``j`` (open_journal); false and a reason if it was not recorded.
local function append_line(j, line)
	local f = j.f
	-- A journal that ends with a half line (slurmctld died mid-append) gets that line ended
	-- first, so this line stays whole: glued onto it, the hold would be unparseable and lost.
	if not j.ends_nl then
		local size = f:seek("end")
		if size and size > 0 and f:seek("set", size - 1) and f:read(1) ~= "\n" then
			line = "\n" .. line
		end
	end
	f:seek("end") -- C stdio: a seek between reading and writing
	local ok, werr = f:write(line)
	if ok then ok, werr = f:flush() end
	if not ok then return false, werr or "write failed" end
	j.ends_nl = true
	return true
end

-- Append one line to the journal at ``journal_path``; false and a reason if it was not recorded.
local function append_journal(journal_path, line)
	local j, err = open_journal(journal_path)
	if not j then return false, err end
	local ok, werr = append_line(j, line)
	local cok = j.f:close()
	if not ok or not cok then return false, werr or "write failed" end
	return true
end

-- What a modify cannot read back from job_rec (Slurm does not expose them there), kept in the
-- AdminComment beside the token: tasks, tasks per node, sockets per node, shared, CPUs per task
-- (the fifth since CPU budgets; a stash of four is read with no CPUs per task).
local function stash_of(v)
	local function s(x) return x and string.format("%d", x) or "-" end
	local stash = "slurmgov:req=" .. s(v.num_tasks) .. "," .. s(v.ntasks_per_node) .. ","
		.. s(v.sockets_per_node) .. "," .. s(v.shared)
	if v.cpus_per_task then stash = stash .. "," .. s(v.cpus_per_task) end -- read only where CPUs are priced
	return stash
end

local function parse_stash(ac)
	local a, b, c, d, e = string.match(ac or "", "slurmgov:req=([%d-]+),([%d-]+),([%d-]+),([%d-]+),?([%d-]*)")
	if not a then return nil end
	return { num_tasks = tonumber(a), ntasks_per_node = tonumber(b), sockets_per_node = tonumber(c),
	         shared = tonumber(d), cpus_per_task = tonumber(e) }
end

-- Journal the hold and pin the job to it. ``journal``: an open journal (open_journal), or the
-- journal's path.
-- ``p``: the GPU price; ``c``: the CPU price where the account has a CPU budget, else nil.
local function admit(job_desc, v, journal, serial, account, p, c)
	local token = new_token()
	local gpu = p.any_gpu
	local line
	if not c then -- a GPU job of an account without a CPU budget: the line as before CPU budgets (11 fields)
		line = table.concat({
			"admit", string.format("%d", os.time()), field(serial), field(token), field(account),
			field(job_desc.user_id), string.format("%.3f", p.cost), string.format("%d", p.gpus),
			string.format("%d", p.tl), field(p.types), string.format("%d", p.tasks),
		}, "\t") .. "\n"
	else
		line = table.concat({
			"admit", string.format("%d", os.time()), field(serial), field(token), field(account),
			field(job_desc.user_id), gpu and string.format("%.3f", p.cost) or "0.000",
			string.format("%d", gpu and p.gpus or 0), string.format("%d", gpu and p.tl or c.tl),
			gpu and field(p.types) or "-", string.format("%d", gpu and p.tasks or c.tasks),
			string.format("%.3f", c.cost), string.format("%d", c.cpus),
		}, "\t") .. "\n"
	end
	local ok, err
	if type(journal) == "table" then ok, err = append_line(journal, line) else ok, err = append_journal(journal, line) end
	if not ok then
		log_user("slurmgov: cannot record the GPU hold (" .. printable(err) .. "); job refused")
		return slurm.ERROR
	end
	-- Pin what was priced: the job cannot outlast or outgrow its hold.
	if gpu then
		if p.pin_time then job_desc.time_limit = p.tl end
		if p.pin_nodes then job_desc.max_nodes = p.nodes end
	end
	if c then
		if c.pin_time then job_desc.time_limit = c.tl end -- the same minutes where both pin
		if c.pin_nodes and not (gpu and p.pin_nodes and p.nodes <= c.nodes) then job_desc.max_nodes = c.nodes end
	end
	local old = job_desc.admin_comment
	local hold = "slurmgov:hold=" .. token .. " " .. stash_of(v)
	if old and old ~= "" then hold = hold .. " " .. old end
	job_desc.admin_comment = hold
	return slurm.SUCCESS
end

-- Refuse with one line to the user, and count it for the governor's metrics (refusals by
-- reason). Recording is best effort: a refusal never waits on, or fails because of, its log.
local function log_refusal(conf, reason, account, uid)
	local f = io.open(conf.refusals_path, "a")
	if f then
		f:write(table.concat({ "refuse", string.format("%d", os.time()), reason, field(account),
			field(uid) }, "\t") .. "\n")
		f:close()
	end
end

local function refuse(conf, reason, account, job_desc, msg)
	log_user(msg)
	log_refusal(conf, reason, account, job_desc.user_id)
	return slurm.ERROR
end

local PROBE_FIELDS = { "account", "partition", "tres_per_node", "tres_per_job", "tres_per_task",
	"tres_per_socket", "min_nodes", "max_nodes", "num_tasks", "ntasks_per_node", "sockets_per_node",
	"time_limit", "shared", "array_inx" }

local PROBE_16BIT = { ntasks_per_node = true, sockets_per_node = true, shared = true }

-- For `slurmgov hooks check`: what Slurm handed the hook for a probe job, and its price.
local function probe(conf, job_desc, p)
	local out = {}
	for _, k in ipairs(PROBE_FIELDS) do
		local val = job_desc[k]
		if k == "time_limit" and (val == INFINITE or val == 0) then
			val = "UNLIMITED"
		elseif type(val) == "number" then
			if PROBE_16BIT[k] then val = set_num16(val) else val = set_num(val) end -- "not set": left out
			if val then val = string.format("%d", val) end
		end
		if val ~= nil then
			out[#out + 1] = k .. "=" .. string.gsub(tostring(val), "[%s]", "_")
		end
	end
	if p and p.any_gpu then
		local pins = {}
		if p.pin_time then pins[#pins + 1] = "time_limit=" .. p.tl end
		if p.pin_nodes then pins[#pins + 1] = "max_nodes=" .. p.nodes end
		out[#out + 1] = string.format("price=%.3f priced_time=%d priced_gpus=%d tasks=%d pinned=%s",
			p.cost, p.tl, p.gpus, p.tasks, (#pins > 0) and table.concat(pins, ",") or "-")
	end
	append_journal(conf.journal_path, table.concat({ "probe", string.format("%d", os.time()),
		field(job_desc.name), field(table.concat(out, " ")) }, "\t") .. "\n")
end

local function lower(s)
	if s == nil or s == "" then return nil end
	return string.lower(s)
end

-- The snapshot's problem (unreadable or stale) and the fail policy that then applies, or nil.
local function snapshot_problem(conf, snap, snap_err)
	if not snap then
		return "budget snapshot unreadable: " .. printable(snap_err), conf.fail_policy, "snapshot_unreadable"
	end
	local age = os.time() - snap.written
	if age > snap.max_age_s then
		return string.format("budget snapshot is stale (written %d s ago, max %d s)", age, snap.max_age_s),
			snap.fail_policy, "snapshot_stale"
	end
	return nil
end

-- Pricing without a readable snapshot still needs its defaults.
local function pricing_snapshot(conf, snap)
	return snap or { weights = {}, default_weight = 1.0, sockets_per_node = 1, operators = {},
		partition_gpus = {}, default_time_min = conf.default_time_min }
end

-- The refusal (without "slurmgov: ") when a CPU cost of ``need`` weighted CPU-seconds exceeds
-- what account's CPU budget ``cbudget`` leaves after the journal's CPU sums ``csums``, or nil.
local function cpu_short(account, cbudget, csums, need, what)
	local left = cbudget - (csums[account] or 0)
	if need <= left then return nil end
	return string.format("account %s: %s CPU-h left, %s %s CPU-h", printable(account), fmt_gpuh(left), what,
		fmt_gpuh(need))
end

-- A job without GPUs of an account with a CPU budget (CPU price ``c``): admitted, journaled and
-- pinned as a GPU job is, against the account's CPU budget alone.
local function admit_cpu_only(conf, job_desc, v, snap, snap_err, account, cbudget, c)
	local problem, policy, why = snapshot_problem(conf, snap, snap_err)
	if problem then
		if policy == "open" then
			log_info("slurmgov: " .. problem .. "; admitting CPU job of account " .. printable(account)
				.. " (fail_policy open)")
			return admit(job_desc, v, conf.journal_path, "0", account, { any_gpu = false }, c)
		end
		return refuse(conf, why, account, job_desc, "slurmgov: " .. problem
			.. "; jobs of accounts with a CPU budget are refused until it is refreshed (fail_policy closed)")
	end
	local j, jerr = open_journal(conf.journal_path)
	if not j then
		return refuse(conf, "journal_unreadable", account, job_desc,
			"slurmgov: cannot open the hold journal (" .. printable(jerr) .. "); job refused")
	end
	local _, _, csums = charged_since(snap, j)
	local cmsg = cpu_short(account, cbudget, csums, c.cost, "job needs up to")
	if cmsg then
		close_journal(j)
		return refuse(conf, "over_cpu_budget", account, job_desc, "slurmgov: " .. cmsg)
	end
	local rc = admit(job_desc, v, j, snap.serial_str, account, { any_gpu = false }, c)
	close_journal(j)
	return rc
end

function slurm_job_submit(job_desc, part_list, submit_uid)
	local conf = read_hook_conf()
	local snap, snap_err = read_snapshot(conf.snapshot_path)
	local ps = pricing_snapshot(conf, snap)
	local v = desc_view(job_desc)
	local is_probe = type(job_desc.name) == "string" and string.sub(job_desc.name, 1, 14) == "slurmgov-probe"
	-- Slurm compares account names in lower case (-A PHYSICS runs as physics): so does the hook.
	local account = lower(job_desc.account) or lower(job_desc.default_account)

	local p, reason, msg = price(v, ps, part_list)
	if is_probe then probe(conf, job_desc, p) end
	if not p then
		return refuse(conf, reason, account, job_desc, "slurmgov: " .. msg)
	end
	-- CPUs are priced only for an account with a CPU budget (none in the snapshot: not looked up).
	local cbudget = snap and snap.cpu_accounts ~= "" and cpu_budget(snap, account) or nil
	if not p.any_gpu and not cbudget then
		-- Without a snapshot the hook cannot tell which accounts have CPU budgets: where the site
		-- says it has some (cpu_budgets yes), fail_policy closed refuses CPU jobs too.
		if not snap and conf.cpu_budgets and conf.fail_policy == "closed" then
			return refuse(conf, "snapshot_unreadable", account, job_desc, "slurmgov: budget snapshot unreadable: "
				.. printable(snap_err) .. "; CPU jobs are refused until it is refreshed (fail_policy closed, cpu_budgets yes)")
		end
		return slurm.SUCCESS
	end
	local c = nil
	if cbudget then
		c, reason, msg = cpu_price(add_cpu_view(v, job_desc), ps, part_list, p.any_gpu and p.gpus or 0)
		if not c then return refuse(conf, reason, account, job_desc, "slurmgov: " .. msg) end
	end
	if not p.any_gpu then return admit_cpu_only(conf, job_desc, v, snap, snap_err, account, cbudget, c) end

	-- Never-placeable requests are refused whatever the budget says.
	if snap and snap.max_gpus_per_node then
		local cap = snap.max_gpus_per_node
		if p.per_node > cap then
			return refuse(conf, "never_placeable", account, job_desc, string.format(
				"slurmgov: job asks for %d GPUs on one node but no node has more than %d; it can never start",
				p.per_node, cap))
		end
		if p.max_nodes and p.gpus > cap * p.max_nodes then
			return refuse(conf, "never_placeable", account, job_desc, string.format(
				"slurmgov: job asks for %d GPUs on at most %d node(s) of %d GPUs each; it can never start",
				p.gpus, p.max_nodes, cap))
		end
	end
	if snap and snap.total_gpus and p.gpus > snap.total_gpus then
		return refuse(conf, "never_placeable", account, job_desc, string.format(
			"slurmgov: job asks for %d GPUs but the cluster has %d; it can never start", p.gpus, snap.total_gpus))
	end

	local who = "account " .. printable(account or "?") .. " uid " .. tostring(job_desc.user_id)
	local problem, policy, why = snapshot_problem(conf, snap, snap_err)
	if problem then
		if policy == "open" then
			log_info("slurmgov: " .. problem .. "; admitting GPU job of " .. who .. " (fail_policy open)")
			return admit(job_desc, v, conf.journal_path, "0", account, p, c)
		end
		return refuse(conf, why, account, job_desc,
			"slurmgov: " .. problem .. "; GPU jobs are refused until it is refreshed (fail_policy closed)")
	end

	if account == nil then
		return refuse(conf, "no_account", account, job_desc,
			"slurmgov: job has no account and the user has no default account; give --account")
	end
	local budget = account_budget(snap, account) -- plain comparison: never a pattern
	if budget == nil then
		return refuse(conf, "no_budget", account, job_desc, string.format(
			"slurmgov: account %s has no GPU budget, job needs up to %s GPU-h", printable(account), fmt_gpuh(p.cost)))
	end
	local j, jerr = open_journal(conf.journal_path)
	if not j then
		return refuse(conf, "journal_unreadable", account, job_desc,
			"slurmgov: cannot open the hold journal (" .. printable(jerr) .. "); job refused")
	end
	local sums, usums, csums = charged_since(snap, j)
	local available = budget - (sums[account] or 0)
	if p.cost > available then
		close_journal(j)
		return refuse(conf, "over_budget", account, job_desc, string.format(
			"slurmgov: account %s: %s GPU-h left, job needs up to %s GPU-h",
			printable(account), fmt_gpuh(available), fmt_gpuh(p.cost)))
	end
	if c then
		local cmsg = cpu_short(account, cbudget, csums, c.cost, "job needs up to")
		if cmsg then
			close_journal(j)
			return refuse(conf, "over_cpu_budget", account, job_desc, "slurmgov: " .. cmsg)
		end
	end
	local uleft, ucap = user_left(snap, usums, account, job_desc.user_id)
	if uleft and p.cost > uleft then
		close_journal(j)
		return refuse(conf, "over_user_cap", account, job_desc, string.format(
			"slurmgov: account %s: %s has %s GPU-h left of their per-user cap of %s GPU-h, job needs up to %s GPU-h",
			printable(account), user_words(job_desc.user_name, job_desc.user_id), fmt_gpuh(math.max(0, uleft)),
			fmt_gpuh(ucap), fmt_gpuh(p.cost)))
	end
	local rc = admit(job_desc, v, j, snap.serial_str, account, p, c)
	close_journal(j)
	return rc
end

-- The job as it stands (job_rec), in view form. Slurm keeps no task, socket or shared counts
-- in job_rec: they come from the stash the hook left in the AdminComment at admission, else
-- tasks are bounded by the job's CPUs (one CPU per task at least).
local function rec_view(r, stash)
	local function pos(x) x = set_num(x); if x and x > 0 then return x end return nil end
	local no_stash = (stash == nil)
	stash = stash or {}
	return {
		tres_per_node = r.tres_per_node, tres_per_job = r.tres_per_job,
		tres_per_task = r.tres_per_task, tres_per_socket = r.tres_per_socket,
		min_nodes = pos(r.min_nodes), max_nodes = pos(r.max_nodes),
		num_tasks = (no_stash and pos(r.min_cpus)) or stash.num_tasks, ntasks_per_node = stash.ntasks_per_node,
		sockets_per_node = stash.sockets_per_node, shared = stash.shared,
		time_limit = time_of(r.time_limit), partition = r.partition,
		tasks_in_array = pos(r.array_task_cnt) or 1,
		cpus_per_task = stash.cpus_per_task, min_cpus = pos(r.min_cpus), pn_min_cpus = set_num16(r.pn_min_cpus),
	}
end

-- Fields of an update (job_desc) that can change a job's price. An update's array_inx is
-- only ArrayTaskThrottle in Slurm 22.05: it changes no price.
local MODIFY_NUMS = { min_nodes = set_num, max_nodes = set_num, num_tasks = set_num, ntasks_per_node = set_num16,
	sockets_per_node = set_num16, shared = set_num16, min_cpus = set_num, pn_min_cpus = set_num16,
	cpus_per_task = set_num16 }
local MODIFY_STRS = { "tres_per_node", "tres_per_job", "tres_per_task", "tres_per_socket", "partition" }
local STASHED = { num_tasks = true, ntasks_per_node = true, sockets_per_node = true, shared = true,
	cpus_per_task = true }

local function modify_refuse(conf, reason, account, job_rec, modify_uid, msg)
	-- Slurm 22.05 discards log_user messages from job_modify: log for the admins instead.
	log_info(string.format("slurmgov: change to job %s by uid %s refused: %s",
		tostring(job_rec.job_id), tostring(modify_uid), msg))
	log_refusal(conf, reason, account, modify_uid)
	return slurm.ERROR
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
	local d, r = job_desc, job_rec
	local changed, stash_changed = false, false
	local ac = r.admin_comment
	local token = ac and string.match(ac, "slurmgov:hold=([%w_.:%-]+)")
	local stash = token and parse_stash(ac) or nil
	local old_v = rec_view(r, stash)
	local new_v = {}
	for k, val in pairs(old_v) do new_v[k] = val end
	for k, read in pairs(MODIFY_NUMS) do
		local val = read(d[k])
		if val ~= nil then
			new_v[k] = val; changed = true
			if STASHED[k] then stash_changed = true end
		end
	end
	for _, k in ipairs(MODIFY_STRS) do
		if d[k] ~= nil then new_v[k] = d[k]; changed = true end
	end
	if d.time_limit ~= nil and d.time_limit ~= NO_VAL then new_v.time_limit = time_of(d.time_limit); changed = true end
	if d.account ~= nil then changed = true end
	if not changed then return slurm.SUCCESS end

	local conf = read_hook_conf()
	local snap, snap_err = read_snapshot(conf.snapshot_path)
	local ps = pricing_snapshot(conf, snap)
	local old_acct = lower(r.account)
	local new_acct = lower(d.account) or old_acct
	local newp, reason, msg = price(new_v, ps, part_list)
	if not newp then return modify_refuse(conf, reason, new_acct, r, modify_uid, msg) end
	local oldp = price(old_v, ps, part_list) or { any_gpu = false }
	-- CPUs count where the job's account (before or after) has a CPU budget
	local new_cb, old_cb = cpu_budget(snap, new_acct), cpu_budget(snap, old_acct)
	if not newp.any_gpu and not oldp.any_gpu and not new_cb and not old_cb then
		-- No snapshot on a site with CPU budgets, fail_policy closed: a CPU job may not grow
		-- (priced with the defaults; root may), as a GPU job may not.
		if not snap and conf.cpu_budgets and conf.fail_policy == "closed" and modify_uid ~= 0 then
			local newc = cpu_price(new_v, ps, part_list, 0)
			local oldc = cpu_price(old_v, ps, part_list, 0)
			if not newc or not oldc or newc.cost > oldc.cost or new_acct ~= old_acct then
				return modify_refuse(conf, "snapshot_unreadable", new_acct, r, modify_uid, "budget snapshot unreadable: "
					.. printable(snap_err) .. "; CPU jobs may not grow until it is refreshed (fail_policy closed, cpu_budgets yes)")
			end
		end
		return slurm.SUCCESS
	end
	local old_cost = oldp.any_gpu and oldp.cost or 0
	local new_cost = newp.any_gpu and newp.cost or 0
	local newc, oldc = nil, nil
	if new_cb then
		newc, reason, msg = cpu_price(new_v, ps, part_list, newp.any_gpu and newp.gpus or 0)
		if not newc then return modify_refuse(conf, reason, new_acct, r, modify_uid, msg) end
	end
	if old_cb and token then oldc = cpu_price(old_v, ps, part_list, oldp.any_gpu and oldp.gpus or 0) end -- what its admission held
	local new_cpu = newc and newc.cost or 0
	local old_cpu = oldc and oldc.cost or 0
	local root = (modify_uid == 0)
	local operator = root or (snap ~= nil and snap.operators[modify_uid] == true)
	if stash_changed and token and not root then
		-- Only root may rewrite the AdminComment that keeps these for the next change.
		return modify_refuse(conf, "bad_request", new_acct, r, modify_uid,
			"tasks, tasks per node, sockets per node and --exclusive of a GPU job are fixed at submission; cancel and resubmit")
	end

	-- What the change asks of the (new) account beyond what is held for the job already.
	local need = (new_acct == old_acct) and (new_cost - old_cost) or new_cost
	local need_cpu = (new_acct == old_acct) and (new_cpu - old_cpu) or new_cpu
	local override, serial = false, snap and snap.serial_str or "0"
	local j, jerr = open_journal(conf.journal_path)
	if not j then
		return modify_refuse(conf, "journal_unreadable", new_acct, r, modify_uid,
			"cannot open the hold journal (" .. printable(jerr) .. ")")
	end
	if need > 0 or need_cpu > 0 then
		local problem, policy, why = snapshot_problem(conf, snap, snap_err)
		local short = nil
		if problem then
			if policy == "open" then serial = "0" else short, reason = problem, why end
		elseif new_acct == nil then
			short, reason = "the job has no account", "no_account"
		elseif need <= 0 then -- CPUs alone grow
			local _, _, csums = charged_since(snap, j)
			short = cpu_short(new_acct, new_cb, csums, need_cpu, "the change needs up to")
			if short then short = short .. " more"; reason = "over_cpu_budget" end
		else
			local budget = account_budget(snap, new_acct)
			local sums, usums, csums = charged_since(snap, j)
			local available = budget and (budget - (sums[new_acct] or 0))
			local uleft, ucap = user_left(snap, usums, new_acct, r.user_id)
			local cshort = need_cpu > 0 and cpu_short(new_acct, new_cb, csums, need_cpu, "the change needs up to")
			if budget == nil then
				short, reason = string.format("account %s has no GPU budget", printable(new_acct)), "no_budget"
			elseif need > available then
				short, reason = string.format("account %s: %s GPU-h left, the change needs up to %s GPU-h more",
					printable(new_acct), fmt_gpuh(available), fmt_gpuh(need)), "over_budget"
			elseif uleft and need > uleft then
				short, reason = string.format(
					"account %s: uid %s has %s GPU-h left of their per-user cap of %s GPU-h, the change needs up to %s GPU-h more",
					printable(new_acct), tostring(r.user_id), fmt_gpuh(math.max(0, uleft)), fmt_gpuh(ucap),
					fmt_gpuh(need)), "over_user_cap"
			elseif cshort then
				short, reason = cshort .. " more", "over_cpu_budget"
			end
		end
		if short then
			if not operator then
				close_journal(j)
				return modify_refuse(conf, reason, new_acct, r, modify_uid, short)
			end
			override = true
			log_info(string.format("slurmgov: uid %s grows job %s past the budget (%s); hold re-priced, override journaled",
				tostring(modify_uid), tostring(r.job_id), short))
		end
	end

	local key = token or string.format("job-%d", r.job_id)
	local line = table.concat({
		"modify", string.format("%d", os.time()), field(serial), field(key), field(new_acct),
		field(r.user_id), string.format("%.3f", new_cost), string.format("%d", newp.any_gpu and newp.gpus or 0),
		string.format("%d", newp.any_gpu and newp.tl or 0), field(newp.any_gpu and newp.types or "-"),
		string.format("%d", r.job_id), field(old_acct), string.format("%.3f", old_cost),
		field(modify_uid), override and "1" or "0", new_token(),
		string.format("%d", newp.any_gpu and newp.tasks or 1),
		string.format("%.3f", new_cpu), string.format("%.3f", old_cpu), string.format("%d", newc and newc.cpus or 0),
	}, "\t") .. "\n"
	local ok, err = append_line(j, line)
	close_journal(j)
	if not ok then
		return modify_refuse(conf, "journal_unreadable", new_acct, r, modify_uid,
			"cannot record the re-priced hold (" .. printable(err) .. ")")
	end
	local pin = nil
	if newp.any_gpu then
		if newp.pin_time then d.time_limit = newp.tl end
		if newp.pin_nodes then pin = newp.nodes end
	end
	if newc then
		if newc.pin_time then d.time_limit = newc.tl end
		if newc.pin_nodes and (not pin or newc.nodes < pin) then pin = newc.nodes end
	end
	if pin then d.max_nodes = pin end
	if stash_changed and token and root then
		-- root may set the AdminComment: keep the stash in step for the next change.
		d.admin_comment = string.gsub(ac, "slurmgov:req=[%d,-]+", (string.gsub(stash_of(new_v), "%%", "%%%%")))
	end
	return slurm.SUCCESS
end

-- For the hook's own unit tests (tests/test_hook_lua.py, run with lua5.1 and a stub slurm table).
slurmgov_hook = {
	price = price, cpu_price = cpu_price, desc_view = desc_view, add_cpu_view = add_cpu_view, rec_view = rec_view, array_count = array_count,
	gpu_entries = gpu_entries, parse_snapshot = parse_snapshot, lookup_account = lookup_account,
	lookup_user = lookup_user, cpu_budget = cpu_budget,
	pack_accounts = pack_accounts, journal_charge = journal_charge, split_tabs = split_tabs, time_limit_min = time_limit_min, parse_stash = parse_stash,
}

return slurm.SUCCESS
