--[[
Test driver for plugins/job_submit.lua under plain lua5.1 (no slurmctld, no root).

  lua5.1 tests/lua/hook_driver.lua plugins/job_submit.lua < cases

Defines a stub `slurm` table, dofile()s the hook and calls the internals it exposes in the
global `slurmgov_hook`.  Reads one case per line from stdin and writes one result line per
case to stdout, in order, so thousands of cases run in one process (tests/hook_cases.py
writes and reads these lines).

Input line: TAB-separated `key=value` fields; a key may repeat (part, w, pg, acct, lookup).
In a value, `\\`, `\t`, `\n` and `\r` stand for a backslash, TAB, LF and CR; sub-fields of
part/w/pg/acct are separated by the byte 0x1f (an empty sub-field is nil).

  id=<text>                       echoed as the first field of the result
  cmd=price                       price(view, snap, part_list)
      d.<field>=<value>           a job_desc field as Slurm hands it: desc_view(job_desc) is priced
      v.<field>=<value>           a view field (instead of d.*): priced as is
      part=name|default_time|max_time|flag_default|max_share    (part_list, keyed by name)
      w=type|weight  pg=name|gpus|type  default_weight= default_time_min= max_gpus_per_node=
      sockets_per_node=           snapshot pricing parameters (hook defaults when absent)
      pc=name|cpus|weight  default_cpu_weight= max_cpus_per_node=   CPU pricing parameters
  cmd=cpu_price                   cpu_price(view, snap, part_list, GPUs of price(view, ...)), the view
                                  as for price (desc_view and add_cpu_view of d.*)
  cmd=desc_view  d.<field>=...    the view of a job_desc
  cmd=rec_view   r.<field>=...  [stash=1 s.<field>=... | ac=<AdminComment>]
                                  rec_view(job_rec, stash): the s.* table, parse_stash(ac), or nil
  cmd=array_count [spec=...]      array_count(spec)
  cmd=gpu_entries [tres=...]      gpu_entries(tres)
  cmd=time_limit_min [tl=...] part=... default_time_min=...
  cmd=pack  acct=name|value ... lookup=name ...           pack_accounts of a snapshot text with
                                  these account lines (in this order), then lookup_account
  cmd=parse_snapshot data=<text> lookup=name ...          parse_snapshot, then lookup_account
  cmd=snapshot_file file=<path>   parse_snapshot of a file: every value read (golden files)
  cmd=journal_file file=<path>    journal_charge of each line of a file (golden files): account,
                                  GPU amount, uid, CPU amount
  cmd=submit d.<field>=... part=... uid=   slurm_job_submit (its files: the hook's own dir)
  cmd=modify d.<field>=... r.<field>=... part=... uid=   slurm_job_modify (its files: the same)
  budget=<n>                      VM instructions before the case is stopped (default 2e8)

Output line: id TAB status TAB fields.  status is ok, no (the function's own refusal or
error value) or error (a Lua error, e.g. the instruction budget).  Numbers are %.17g, so
Python reads back the exact double.
--]]

local user_msgs = {} -- what the hook told the user (slurm.log_user), per case
slurm = {
	SUCCESS = 0, ERROR = -1,
	log_user = function(fmt, ...) user_msgs[#user_msgs + 1] = string.format(fmt, ...) end,
	log_info = function() end, log_error = function() end,
	log_debug = function() end, log_verbose = function() end,
}

local hook_path = arg[1] or "plugins/job_submit.lua"
dofile(hook_path)
local H = slurmgov_hook
assert(type(H) == "table", "the hook does not define slurmgov_hook")

local SEP = "\31"
local NUMERIC = {
	min_nodes = true, max_nodes = true, num_tasks = true, ntasks_per_node = true,
	sockets_per_node = true, shared = true, time_limit = true, tasks_in_array = true,
	min_cpus = true, array_task_cnt = true, job_id = true, cpus_per_task = true, pn_min_cpus = true,
}
local VIEW_FIELDS = { "tres_per_node", "tres_per_job", "tres_per_task", "tres_per_socket", "min_nodes",
	"max_nodes", "num_tasks", "ntasks_per_node", "sockets_per_node", "shared", "time_limit", "partition",
	"array_inx", "tasks_in_array", "cpus_per_task", "min_cpus", "pn_min_cpus", "cpus_per_tres" }

local function unescape(s)
	return (string.gsub(s, "\\(.)", function(c)
		if c == "t" then return "\t" elseif c == "n" then return "\n" elseif c == "r" then return "\r" end
		return c
	end))
end

local function clean(s)
	return (string.gsub(tostring(s), "[\t\r\n\\]", function(c)
		if c == "\t" then return "\\t" elseif c == "\n" then return "\\n" elseif c == "\r" then return "\\r" end
		return "\\\\"
	end))
end

local function split(s, sep)
	local out, pos = {}, 1
	while true do
		local i = string.find(s, sep, pos, true)
		if not i then out[#out + 1] = string.sub(s, pos); return out end
		out[#out + 1] = string.sub(s, pos, i - 1)
		pos = i + 1
	end
end

local function num(x)
	if type(x) == "number" then return string.format("%.17g", x) end
	if x == nil then return "-" end
	return clean(x)
end

local function opt_num(s)
	if s == nil or s == "" then return nil end
	return tonumber(s)
end

-- One input line -> { single = {key = value}, multi = {key = {values}}, fields = {prefix = {k = v}} }
local function parse_line(line)
	local c = { single = {}, multi = {}, d = {}, v = {}, r = {}, s = {} }
	for _, f in ipairs(split(line, "\t")) do
		local eq = string.find(f, "=", 1, true)
		if eq then
			local k, val = string.sub(f, 1, eq - 1), unescape(string.sub(f, eq + 1))
			local prefix, name = string.match(k, "^([dvrs])%.(.+)$")
			if prefix then
				if NUMERIC[name] and not (prefix == "v" and name == "time_limit" and val == "unlimited") then
					c[prefix][name] = tonumber(val)
				else
					c[prefix][name] = val
				end
			else
				c.single[k] = val
				c.multi[k] = c.multi[k] or {}
				table.insert(c.multi[k], val)
			end
		end
	end
	return c
end

local function part_list(c)
	local parts = {}
	for _, p in ipairs(c.multi.part or {}) do
		local f = split(p, SEP)
		parts[f[1]] = {
			name = f[1], default_time = opt_num(f[2]), max_time = opt_num(f[3]),
			flag_default = opt_num(f[4]), max_share = opt_num(f[5]),
		}
	end
	return parts
end

local function snap_params(c)
	local snap = { weights = {}, partition_gpus = {}, default_weight = 1.0, sockets_per_node = 1,
		default_time_min = 60, operators = {} }
	for _, w in ipairs(c.multi.w or {}) do
		local f = split(w, SEP)
		snap.weights[f[1]] = tonumber(f[2])
	end
	for _, g in ipairs(c.multi.pg or {}) do
		local f = split(g, SEP)
		snap.partition_gpus[f[1]] = { n = tonumber(f[2]), type = (f[3] ~= nil and f[3] ~= "") and f[3] or nil }
	end
	snap.partition_cpus = {}
	for _, g in ipairs(c.multi.pc or {}) do
		local f = split(g, SEP)
		snap.partition_cpus[f[1]] = { n = tonumber(f[2]), w = tonumber(f[3]) }
	end
	for _, k in ipairs({ "default_weight", "default_time_min", "max_gpus_per_node", "sockets_per_node",
		"default_cpu_weight", "max_cpus_per_node" }) do
		if c.single[k] ~= nil then snap[k] = tonumber(c.single[k]) end
	end
	return snap
end

local function view_fields(v)
	local out = {}
	for _, k in ipairs(VIEW_FIELDS) do
		if v[k] ~= nil then out[#out + 1] = k .. "=" .. num(v[k]) end
	end
	return table.concat(out, "\t")
end

local function b(x) return x and "1" or "0" end

local CMDS = {}

function CMDS.price(c)
	local v
	if next(c.v) ~= nil then v = c.v else v = H.desc_view(c.d) end
	local p, reason, msg = H.price(v, snap_params(c), part_list(c))
	if not p then return "no\t" .. clean(reason) .. "\t" .. clean(msg) end
	if not p.any_gpu then return "ok\tany_gpu=0" end
	return table.concat({ "ok", "any_gpu=1", "gpus=" .. num(p.gpus), "weighted=" .. num(p.weighted),
		"per_node=" .. num(p.per_node), "nodes=" .. num(p.nodes), "max_nodes=" .. num(p.max_nodes),
		"tasks=" .. num(p.tasks), "types=" .. clean(p.types), "tl=" .. num(p.tl),
		"pin_time=" .. b(p.pin_time), "pin_nodes=" .. b(p.pin_nodes), "cost=" .. num(p.cost) }, "\t")
end

function CMDS.cpu_price(c)
	local v
	if next(c.v) ~= nil then v = c.v else v = H.add_cpu_view(H.desc_view(c.d), c.d) end
	local g = H.price(v, snap_params(c), part_list(c)) -- the GPUs --cpus-per-gpu multiplies
	local p, reason, msg = H.cpu_price(v, snap_params(c), part_list(c), (g and g.any_gpu) and g.gpus or 0)
	if not p then return "no\t" .. clean(reason) .. "\t" .. clean(msg) end
	return table.concat({ "ok", "cpus=" .. num(p.cpus), "weighted=" .. num(p.weighted), "nodes=" .. num(p.nodes),
		"tasks=" .. num(p.tasks), "tl=" .. num(p.tl), "pin_time=" .. b(p.pin_time),
		"pin_nodes=" .. b(p.pin_nodes), "cost=" .. num(p.cost) }, "\t")
end

function CMDS.desc_view(c)
	return "ok\t" .. view_fields(H.add_cpu_view(H.desc_view(c.d), c.d))
end

function CMDS.rec_view(c)
	local stash = nil
	if c.single.stash == "1" then stash = c.s end
	if c.single.ac ~= nil then stash = H.parse_stash(c.single.ac) end
	return "ok\t" .. view_fields(H.rec_view(c.r, stash))
end

function CMDS.array_count(c)
	local n, err = H.array_count(c.single.spec)
	if not n then return "no\t" .. clean(err) end
	return "ok\t" .. num(n)
end

function CMDS.gpu_entries(c)
	local e, err = H.gpu_entries(c.single.tres)
	if not e then return "no\t" .. clean(err) end
	local out = { "ok" }
	for _, x in ipairs(e) do out[#out + 1] = clean(x.type or "-") .. ":" .. num(x.count) end
	return table.concat(out, "\t")
end

function CMDS.time_limit_min(c)
	local tl = c.single.tl
	if tl ~= nil and tl ~= "unlimited" then tl = tonumber(tl) end
	local parts = {}
	for _, p in pairs(part_list(c)) do parts[#parts + 1] = p end
	local m, pin, err = H.time_limit_min(tl, parts, tonumber(c.single.default_time_min or "60"))
	if not m then return "no\t" .. clean(err) end
	return "ok\t" .. num(m) .. "\t" .. b(pin)
end

local function lookups(c, packed)
	local out = {}
	for _, name in ipairs(c.multi.lookup or {}) do out[#out + 1] = num(H.lookup_account(packed, name)) end
	return table.concat(out, "\t")
end

function CMDS.pack(c)
	-- pack_accounts(data) packs the account lines of a snapshot's text (any order)
	local lines = {}
	for _, a in ipairs(c.multi.acct or {}) do
		local f = split(a, SEP)
		lines[#lines + 1] = "\naccount\t" .. f[1] .. "\t" .. f[2]
	end
	local packed, dup = H.pack_accounts("slurmgov-snapshot\t1" .. table.concat(lines) .. "\nend\n")
	if not packed then return "no\tduplicate\t" .. clean(dup) end
	return "ok\t" .. lookups(c, packed)
end

function CMDS.parse_snapshot(c)
	local snap, err = H.parse_snapshot(c.single.data or "")
	if not snap then return "no\t" .. clean(err) end
	local w, g = {}, {}
	for t, x in pairs(snap.weights) do w[#w + 1] = clean(t) .. ":" .. num(x) end
	for n, x in pairs(snap.partition_gpus) do g[#g + 1] = clean(n) .. ":" .. num(x.n) .. ":" .. clean(x.type or "-") end
	table.sort(w); table.sort(g)
	return table.concat({ "ok", "serial=" .. clean(snap.serial_str), "default_time_min=" .. num(snap.default_time_min),
		"default_weight=" .. num(snap.default_weight), "sockets_per_node=" .. num(snap.sockets_per_node),
		"max_gpus_per_node=" .. num(snap.max_gpus_per_node), "fail_policy=" .. clean(snap.fail_policy),
		"weights=" .. table.concat(w, ","), "partition_gpus=" .. table.concat(g, ","),
		"lookups=" .. string.gsub(lookups(c, snap.accounts), "\t", ",") }, "\t")
end

local function slurp(path)
	local f = assert(io.open(path, "rb"))
	local data = f:read("*a")
	f:close()
	return data
end

-- cmd=snapshot_file file=<path>: parse_snapshot of a golden file, every value it read
-- (tests/test_hook_files.py compares them with slurmgov/slurm/snapshot.py's parse).
function CMDS.snapshot_file(c)
	local snap, err = H.parse_snapshot(slurp(c.single.file))
	if not snap then return "no\t" .. clean(err) end
	local w, g, o, a, u = {}, {}, {}, {}, {}
	for t, x in pairs(snap.weights) do w[#w + 1] = clean(t) .. SEP .. num(x) end
	for n, x in pairs(snap.partition_gpus) do g[#g + 1] = clean(n) .. SEP .. num(x.n) .. SEP .. clean(x.type or "-") end
	for u in pairs(snap.operators) do o[#o + 1] = num(u) end
	for name, val in string.gmatch(snap.accounts, "\naccount\t([^\t]*)\t([^\n]*)") do
		a[#a + 1] = clean(name) .. SEP .. num(H.lookup_account(snap.accounts, name))
	end
	for acct, uid in string.gmatch(snap.users, "\nuser\t([^\t]*):(%d+)\t") do
		local avail, cap = H.lookup_user(snap.users, acct, uid)
		u[#u + 1] = clean(acct) .. SEP .. uid .. SEP .. num(avail) .. SEP .. num(cap)
	end
	local ca, pc = {}, {}
	for name in string.gmatch(snap.cpu_accounts, "\ncpu_account\t([^\t]*)\t") do
		ca[#ca + 1] = clean(name) .. SEP .. num(H.cpu_budget(snap, name))
	end
	for n, x in pairs(snap.partition_cpus) do pc[#pc + 1] = clean(n) .. SEP .. num(x.n) .. SEP .. num(x.w) end
	table.sort(w); table.sort(g); table.sort(o); table.sort(a); table.sort(u); table.sort(ca); table.sort(pc)
	return table.concat({ "ok", "serial=" .. clean(snap.serial_str), "written=" .. num(snap.written),
		"max_age_s=" .. num(snap.max_age_s), "fail_policy=" .. clean(snap.fail_policy),
		"default_time_min=" .. num(snap.default_time_min), "default_weight=" .. num(snap.default_weight),
		"sockets_per_node=" .. num(snap.sockets_per_node), "max_gpus_per_node=" .. num(snap.max_gpus_per_node),
		"total_gpus=" .. num(snap.total_gpus), "journal_offset=" .. num(snap.journal_offset),
		"weights=" .. table.concat(w, ","), "partition_gpus=" .. table.concat(g, ","),
		"operators=" .. table.concat(o, ","), "accounts=" .. table.concat(a, ","), "users=" .. table.concat(u, ","),
		"cpu_accounts=" .. table.concat(ca, ","), "partition_cpus=" .. table.concat(pc, ","),
		"default_cpu_weight=" .. num(snap.default_cpu_weight), "max_cpus_per_node=" .. num(snap.max_cpus_per_node) }, "\t")
end

-- cmd=journal_file file=<path>: per whole line of the file (as charged_since splits them), what
-- journal_charge counts: "account<0x1f>amount<0x1f>uid", or "-" for nothing.
function CMDS.journal_file(c)
	local out = { "ok" }
	for line in string.gmatch(slurp(c.single.file), "([^\n]*)\n") do
		local acct, add, uid, cpu = H.journal_charge(H.split_tabs(line))
		out[#out + 1] = acct and (clean(acct) .. SEP .. num(add) .. SEP .. clean(uid) .. SEP .. num(cpu)) or "-"
	end
	return table.concat(out, "\t")
end

-- cmd=submit d.<field>=... part=... uid=<n>: slurm_job_submit itself, with the files of the
-- directory the hook was loaded from (run the driver on a copy of the hook in a scratch dir).
-- Result: rc, the job's AdminComment, what the hook told the user (or "-").
function CMDS.submit(c)
	local parts = part_list(c)
	user_msgs = {}
	local rc = slurm_job_submit(c.d, parts, tonumber(c.single.uid or "0"))
	local said = (#user_msgs > 0) and table.concat(user_msgs, " | ") or "-"
	return "ok\t" .. num(rc) .. "\t" .. clean(c.d.admin_comment or "-") .. "\t" .. clean(said)
end

-- cmd=modify d.<field>=... r.<field>=... part=... uid=<n>: slurm_job_modify (job_desc d, job_rec r)
-- with the files of the hook's directory, as cmd=submit. Result: rc, the change's time limit and
-- maximum node count after the hook (or "-").
function CMDS.modify(c)
	local parts = part_list(c)
	local rc = slurm_job_modify(c.d, c.r, parts, tonumber(c.single.uid or "0"))
	return "ok\t" .. num(rc) .. "\t" .. num(c.d.time_limit) .. "\t" .. num(c.d.max_nodes)
end

local function budget_exceeded() error("instruction budget exceeded", 2) end

local out = {}
for line in io.lines() do
	local c = parse_line(line)
	local id, cmd = c.single.id or "?", c.single.cmd
	local f = CMDS[cmd or ""]
	local res
	if not f then
		res = "error\tunknown cmd " .. clean(cmd or "")
	else
		debug.sethook(budget_exceeded, "", tonumber(c.single.budget or "200000000"))
		local ok, r = pcall(f, c)
		debug.sethook()
		res = ok and r or ("error\t" .. clean(r))
	end
	out[#out + 1] = clean(id) .. "\t" .. res
	if #out >= 1000 then io.write(table.concat(out, "\n"), "\n"); out = {} end
end
if #out > 0 then io.write(table.concat(out, "\n"), "\n") end
io.flush()
