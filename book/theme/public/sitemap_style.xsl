<?xml version="1.0" encoding="UTF-8"?>
<!-- jupyter-book asks every theme for this sitemap stylesheet; the course website's sitemap is empty. -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:template match="/"><html><body><p>This site has no sitemap: start at index.html.</p></body></html></xsl:template>
</xsl:stylesheet>
