-- Neovim, headless, as a user of shapecheck lsp: open $SPEC, start the server, wait for its
-- diagnostics, then write them, the inlay hints and a hover's first line to $OUT.
-- Neovim 0.7 has vim.lsp.start_client only, and no inlay hints of its own (they are asked
-- for as a request); 0.8 has vim.lsp.start, 0.10 vim.lsp.inlay_hint.
vim.cmd("edit " .. vim.fn.fnameescape(vim.env.SPEC))
local buf = vim.api.nvim_get_current_buf()
local config = {name = "shapecheck", cmd = {vim.env.PYTHON, "-m", "shapecheck", "lsp"},
                root_dir = vim.fn.getcwd()}
local id
if vim.lsp.start then
  id = vim.lsp.start(config)
else
  id = vim.lsp.start_client(config)
  vim.lsp.buf_attach_client(buf, id)
end
local out = {}
local arrived = vim.wait(30000, function() return #vim.diagnostic.get(buf) > 0 end, 10)
table.insert(out, "diagnostics arrived: " .. tostring(arrived))
for _, d in ipairs(vim.diagnostic.get(buf)) do
  local lsp = d.user_data and d.user_data.lsp or {}
  table.insert(out, string.format("diagnostic %d:%d %s %s", d.lnum + 1, d.col + 1,
                                  d.code or lsp.code or "?", d.message))
end
local client = vim.lsp.get_client_by_id(id)
local document = {uri = vim.uri_from_bufnr(buf)}
local hints
if vim.lsp.inlay_hint then
  vim.lsp.inlay_hint.enable(true, {bufnr = buf})
  vim.wait(10000, function() return #vim.lsp.inlay_hint.get({bufnr = buf}) > 0 end, 10)
  hints = {}
  for _, item in ipairs(vim.lsp.inlay_hint.get({bufnr = buf})) do
    table.insert(hints, item.inlay_hint)
  end
else
  local range = {start = {line = 0, character = 0},
                 ["end"] = {line = vim.api.nvim_buf_line_count(buf), character = 0}}
  hints = client.request_sync("textDocument/inlayHint", {textDocument = document,
                                                         range = range}, 10000, buf).result
end
for _, h in ipairs(hints or {}) do
  table.insert(out, string.format("hint %d %s", h.position.line + 1, h.label))
end
local hover = client.request_sync("textDocument/hover", {textDocument = document,
  position = {line = tonumber(vim.env.HOVER_LINE) - 1, character = 6}}, 10000, buf)
table.insert(out, "hover " .. vim.split(hover.result.contents.value, "\n")[1])
vim.fn.writefile(out, vim.env.OUT)
client.stop()
vim.wait(5000, function() return client.is_stopped() end, 10)
vim.cmd("qa!")
